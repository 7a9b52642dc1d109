"""The benchmark report: a markdown table (one row per run), the relion-vs-none agreement, and
figures laid out like the paper's Fig. 4 (FSC curves) and Fig. 5 (angular error distributions).

Why matplotlib (imported only here, only when drawing): PNGs without a display or Qt; the
science core stays Qt-free. Figure layout: rows = SNR (highest first), columns = structure, one
colour per variant; in Fig. 4 solid = FSC with the ground truth (masked), dotted = RELION's
half-map FSC.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from credgui.bench.results import load_results, write_result
from credgui.errors import InputError

__all__ = ["load_results", "compare_relion_none", "markdown_table", "write_report", "COLORS"]

COLORS = {"relion": "black", "none": "tab:gray", "red": "tab:purple", "cwred": "tab:red", "relion_ext": "tab:green"}
REPORT_DIR = "report"


def compare_relion_none(out_dir: str | Path, dataset: str, rec_relion: dict, rec_none: dict) -> dict[str, Any]:
    """FSC between the final maps of the relion and none runs of one data set (unmasked), up to
    the worse of their reported resolutions: the hook with denoiser none must reproduce RELION."""
    from credgui.bench.metrics import final_map, map_agreement

    a = final_map(rec_relion)
    b = final_map(rec_none)
    if a.shape != b.shape:
        raise InputError(rec_none.get("job_dir"), f"final map {b.shape} differs in shape from relion's {a.shape}")
    up_to = max(float(rec_relion["reported_angst"]), float(rec_none["reported_angst"]))
    cmp = map_agreement(a, b, float(rec_relion["pixel_size"]), up_to)
    cmp.update(dataset=dataset, relion_reported_angst=rec_relion["reported_angst"],
               none_reported_angst=rec_none["reported_angst"],
               relion_iterations=rec_relion.get("iterations"), none_iterations=rec_none.get("iterations"),
               median_angle_between_runs_deg=None)
    try:
        from credgui.metrics.angles import angular_errors
        import numpy as np

        ja, jb = Path(rec_relion.get("data_star") or ""), Path(rec_none.get("data_star") or "")
        if ja.is_file() and jb.is_file():
            cmp["median_angle_between_runs_deg"] = float(np.median(angular_errors(ja, jb)))
    except InputError:
        pass
    return cmp


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else str(v)


def fsc_at_nyquist(record: dict[str, Any]) -> float | None:
    """FSC against the truth in the last shell: tells runs apart when every one reaches Nyquist."""
    curve = record.get("fsc_truth_curve") or []
    return float(curve[-1][1]) if curve else None


def markdown_table(records: list[dict[str, Any]]) -> str:
    head = ("| structure | SNR | variant | status | iter | wall (min) | reported (A) | truth 0.5 (A) | truth 0.143 (A) "
            "| overest. (A) | overest. (shells) | FSC truth at Nyquist | ang. err. median / mean / p90 (deg) |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in records:
        ok = r.get("status") == "finished"
        ae = r.get("angular_error") or {}
        lines.append("| " + " | ".join([
            r["structure"], f"{float(r['snr']):g}", r["variant"],
            "ok" if ok else f"failed: {str(r.get('error', ''))[:80]}",
            (_f(r.get("iterations"), 0) + ("" if r.get("converged", True) else "*")) if ok else "–", _f((r.get("wall_s") or 0) / 60, 1) if r.get("wall_s") else "–",
            _f(r.get("reported_angst")), _f(r.get("fsc_truth_05_angst")), _f(r.get("fsc_truth_0143_angst")),
            _f(r.get("overestimation_angst")), _f(r.get("overestimation_shells"), 1),
            _f(fsc_at_nyquist(r), 3),
            f"{_f(ae.get('median_deg'))} / {_f(ae.get('mean_deg'))} / {_f(ae.get('p90_deg'))}" if ae else "–",
        ]) + " |")
    return "\n".join(lines) + "\n"


def _comparison_table(cmps: list[dict[str, Any]]) -> str:
    lines = ["| data set | min FSC(relion, none) up to | = (A) | FSC 0.99 at (A) | map correlation | median angle between runs (deg) | iterations relion / none |",
             "|---|---|---|---|---|---|---|"]
    for c in cmps:
        lines.append(f"| {c['dataset']} | {_f(c['fsc_min_to_resolution'], 5)} | {_f(c['up_to_angst'])} | "
                     f"{_f(c['fsc_099_angst'])} | {_f(c['correlation'], 6)} | {_f(c.get('median_angle_between_runs_deg'), 3)} | "
                     f"{c.get('relion_iterations')} / {c.get('none_iterations')} |")
    return "\n".join(lines) + "\n"


def _grid(records):
    structures = sorted({r["structure"] for r in records})
    snrs = sorted({float(r["snr"]) for r in records}, reverse=True)
    return structures, snrs


def _figure_fsc(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    structures, snrs = _grid(records)
    fig, axes = plt.subplots(len(snrs), len(structures), figsize=(3.2 * len(structures), 2.6 * len(snrs)),
                             squeeze=False, sharex=False, sharey=True)
    for i, snr in enumerate(snrs):
        for j, s in enumerate(structures):
            ax = axes[i][j]
            for r in records:
                if r["structure"] != s or float(r["snr"]) != snr or r.get("status") != "finished":
                    continue
                c = COLORS.get(r["variant"], "tab:blue")
                for key, style, label in (("fsc_truth_curve", "-", r["variant"]), ("halfmap_fsc_curve", ":", None)):
                    curve = r.get(key) or []
                    if curve:
                        x = [1.0 / p[0] for p in curve]
                        ax.plot(x, [p[1] for p in curve], style, color=c, lw=1.2, label=label)
            ax.axhline(0.5, color="0.7", lw=0.5)
            ax.axhline(0.143, color="0.7", lw=0.5, ls="--")
            ax.set_ylim(-0.1, 1.02)
            if i == 0:
                ax.set_title(s, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"SNR {snr:g}\nFSC")
            if i == len(snrs) - 1:
                ax.set_xlabel("spatial frequency (1/A)")
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, title="solid: vs truth\ndotted: half maps",
                   title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    _save(fig, path)
    plt.close(fig)


def _figure_angles(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    structures, snrs = _grid(records)
    fig, axes = plt.subplots(len(snrs), len(structures), figsize=(3.2 * len(structures), 2.6 * len(snrs)), squeeze=False)
    for i, snr in enumerate(snrs):
        for j, s in enumerate(structures):
            ax = axes[i][j]
            sel = [r for r in records if r["structure"] == s and float(r["snr"]) == snr and r.get("status") == "finished"]
            p95 = 0.0
            for r in sel:
                ae = r["angular_error"]
                counts = np.asarray(ae["hist_counts"], dtype=float)
                if counts.sum() == 0:
                    continue
                width = float(ae["hist_bin_deg"])
                cdf = np.cumsum(counts) / counts.sum()
                p95 = max(p95, width * (int(np.searchsorted(cdf, 0.95)) + 1))
            xmax = max(2.0, min(180.0, 1.2 * p95))
            for r in sel:
                ae = r["angular_error"]
                counts = np.asarray(ae["hist_counts"], dtype=float)
                if counts.sum() == 0:
                    continue
                width = float(ae["hist_bin_deg"])
                edges = np.arange(counts.size + 1) * width
                ax.stairs(counts / counts.sum(), edges, color=COLORS.get(r["variant"], "tab:blue"), lw=1.2,
                          label=f"{r['variant']} (median {ae['median_deg']:.1f})")
            ax.set_xlim(0, xmax)
            ax.legend(fontsize=6)
            if i == 0:
                ax.set_title(s, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"SNR {snr:g}\nfraction of particles")
            if i == len(snrs) - 1:
                ax.set_xlabel("angular error (deg)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    from credgui._io import atomic_open

    with atomic_open(path) as fh:
        fig.savefig(fh, dpi=120, format="png")


def write_report(out_dir: str | Path, *, figures: bool = True) -> dict[str, Any]:
    """Write OUT/report/{results.md, comparisons.json, fig4_fsc.png, fig5_angles.png}; returns
    {"markdown": path, "figures": [paths], "problems": [lines], "comparisons": [...]}."""
    out = Path(out_dir)
    records, problems = load_results(out)
    rep = out / REPORT_DIR
    rep.mkdir(exist_ok=True)
    by = {(r["structure"], float(r["snr"]), r["variant"]): r for r in records}
    cmps = []
    for (s, snr, v), r in sorted(by.items()):
        if v != "relion":
            continue
        b = by.get((s, snr, "none"))
        if r.get("status") == "finished" and b and b.get("status") == "finished":
            try:
                cmps.append(compare_relion_none(out, f"{s}_snr{snr:g}", r, b))
            except InputError as exc:
                problems.append(str(exc))
    write_result(rep / "comparisons.json", {"relion_vs_none": cmps})
    denoisers = sorted({(r["variant"], (r.get("hook_config") or {}).get("denoiser")) for r in records if r["variant"] in ("red", "cwred")})
    md = ["# credgui benchmark results", "", f"Directory: `{out}`", ""]
    if denoisers:
        md += ["Denoiser used by red/cwred: " + ", ".join(f"{v}: `{d}`" for v, d in denoisers), ""]
    md += ["Resolutions in A. *reported*: RELION's final half-map FSC 0.143 (unmasked); *truth 0.5/0.143*: FSC of the "
           "final map with the ground truth inside the soft solvent mask; *overest.*: truth 0.5 minus reported "
           "(positive = RELION claims too much), in A and in Fourier shells; *FSC truth at Nyquist*: that masked FSC in "
           "the last shell (tells runs apart when all reach Nyquist). *iter* marked * = stopped by "
           "auto_iter_max (not converged: the last iteration's half maps averaged stand in for the final map).", "", markdown_table(records)]
    if cmps:
        md += ["", "## relion (no hook) vs none (credgui's hook, Gaussian prior): final maps", "", _comparison_table(cmps)]
    if problems:
        md += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    figs = []
    if figures and any(r.get("status") == "finished" for r in records):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            problems.append("matplotlib is not installed: no figures (pip install matplotlib)")
        else:
            _figure_fsc(records, rep / "fig4_fsc.png")
            _figure_angles(records, rep / "fig5_angles.png")
            figs = [rep / "fig4_fsc.png", rep / "fig5_angles.png"]
            md += ["", "![FSC](fig4_fsc.png)", "", "![angular error](fig5_angles.png)", ""]
    text = "\n".join(md) + "\n"
    from credgui._io import write_text_atomic

    write_text_atomic(rep / "results.md", text)
    return {"markdown": rep / "results.md", "figures": figs, "problems": problems, "comparisons": cmps, "records": records}
