"""A benchmark plan: structures x SNRs x variants, read from a TOML file.

Why a file: the benchmark must be reproducible by anyone, so everything that decides a number
(data-set settings, seeds, RELION parameters, hook settings per variant) is written down in one
place and copied into the output directory.

Plan keys (all but ``structures`` and ``snrs`` have defaults)::

    title = "..."
    seed = 1000              # data set seed = seed + crc32("<structure>|<snr>") % 100000
    snrs = [0.05, 0.02]
    variants = ["relion", "none", "red", "cwred"]
    denoiser = "auto"        # for red/cwred: auto = the shipped U-Net if any, else "none"
    weights = ""             # optional weights file for the denoiser
    timeout_minutes = 240    # a run taking longer is stopped and recorded as failed
    [dataset]   box, pixel_size, n_particles, defocus_um, astigmatism_um, max_offset_px
    [refine]    RefineParams fields (mpi_procs, threads, healpix_order, ...; random_seed)
    [[structures]] name, model, family, particle_diameter (optional, A)

``model``: a path (relative to the plan file), or ``resources:structures/X.pdbqt`` (shipped),
``dockstring:NAME`` (PyPI dockstring==0.3.4), ``theseus:ldh/1a5z_A.pdb.gz`` (Debian
theseus-examples), ``mdanalysis:dssp/X.pdb.gz`` (PyPI MDAnalysisTests==2.11.0). Extra folders to
search for the packages: ``$CREDGUI_MODEL_DIRS`` (colon-separated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tomllib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credgui.config import HookConfig, config_to_dict
from credgui.errors import InputError

__all__ = ["VARIANTS", "Structure", "DatasetSpec", "RunSpec", "Plan", "load_plan", "parse_plan", "resolve_model"]

VARIANTS = ("relion", "none", "red", "cwred", "relion_ext")
"""relion: relion_refine without --external_reconstruct; none: credgui's hook with RELION's
Gaussian prior (must give relion's maps); red: lambda = lambda_max at every iteration with a
nominal resolution; cwred: the default confidence-weighted ramp. relion_ext (diagnostic, not in
the default list): --external_reconstruct with RELION's own relion_external_reconstruct as the
hook, to tell a difference of RELION's external path from one of credgui's hook."""
DEFAULT_VARIANTS = ("relion", "none", "red", "cwred")
RELION_EXTERNAL = "relion_external_reconstruct"

RED_LOW_RES = 1000.0
RED_HIGH_RES = 999.0
"""The ``red`` variant's ramp: every finite nominal resolution is finer than 999 A, so it gets
lambda_max. The first iteration has no FSC yet (no nominal resolution): the hook gives it 0."""

THESEUS_DIR = Path("/usr/share/doc/theseus/examples")
MODEL_DIRS_ENV = "CREDGUI_MODEL_DIRS"

DATASET_DEFAULTS: dict[str, Any] = dict(
    box=64, pixel_size=2.2, n_particles=1200, defocus_um=(0.2, 2.0), astigmatism_um=0.0, max_offset_px=0.0
)
REFINE_DEFAULTS: dict[str, Any] = dict(
    symmetry="C1", mpi_procs=3, threads=1, pad=2, ini_high=30.0, healpix_order=2, auto_local_healpix_order=3,
    offset_range=5.0, offset_step=2.0, oversampling=1, auto_iter_max=None, absolute_greyscale=True,
    low_resol_join_halves=40.0, pool=3, flatten_solvent=True, zero_mask=True, ctf=True,
)
"""The demo's workstation sampling (credgui demo): --auto_local_healpix_order 3 keeps a run
near 15 min on 2 cores; absolute greyscale since initial_model.mrc is the scaled ground truth."""

_TOP_KEYS = {"title", "seed", "snrs", "variants", "denoiser", "weights", "timeout_minutes", "dataset", "refine",
             "structures", "notes", "excluded_families"}


@dataclass(frozen=True)
class Structure:
    name: str
    model: Path
    spec: str
    family: str = ""
    particle_diameter: float | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One simulated data set: shared by every variant (same seed, same initial model)."""

    structure: Structure
    snr: float
    seed: int
    settings: dict[str, Any] = field(compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.structure.name}_snr{self.snr:g}"


@dataclass(frozen=True)
class RunSpec:
    dataset: DatasetSpec
    variant: str
    hook_config: HookConfig
    external_reconstruct: bool
    hook: str | None = None
    """the external-reconstruct command (None: credgui-reconstruct)"""

    @property
    def run_id(self) -> str:
        return f"{self.dataset.name}__{self.variant}"


@dataclass(frozen=True)
class Plan:
    path: Path
    text: str
    title: str
    seed: int
    snrs: tuple[float, ...]
    variants: tuple[str, ...]
    denoiser: str
    weights: str | None
    timeout_minutes: float
    dataset: dict[str, Any]
    refine: dict[str, Any]
    structures: tuple[Structure, ...]

    def datasets(self) -> list[DatasetSpec]:
        out = []
        for s in self.structures:
            for snr in self.snrs:
                seed = self.seed + zlib.crc32(f"{s.name}|{snr:g}".encode()) % 100_000
                out.append(DatasetSpec(s, snr, seed, dict(self.dataset)))
        return out

    def runs(self, denoiser: str | None = None, weights: str | None = None) -> list[RunSpec]:
        """Every run, data set by data set (variants of one data set next to each other).
        ``denoiser``/``weights``: the resolved denoiser for red/cwred (``choose_denoiser``)."""
        den = denoiser if denoiser is not None else self.denoiser
        w = weights if weights is not None else self.weights
        out = []
        for ds in self.datasets():
            for v in self.variants:
                out.append(RunSpec(ds, v, variant_config(v, den, w), v != "relion",
                                   RELION_EXTERNAL if v == "relion_ext" else None))
        return out

    def settings_key(self, run: RunSpec) -> str:
        """What a run's numbers depend on; a result JSON with another key is stale."""
        d = {
            "model_sha": _sha256(run.dataset.structure.model),
            "snr": run.dataset.snr,
            "seed": run.dataset.seed,
            "dataset": run.dataset.settings,
            "refine": self.refine,
            "variant": run.variant,
            "hook": config_to_dict(run.hook_config),
            # a retrained model under the same path is another experiment
            "weights_sha": _sha256(Path(run.hook_config.weights)) if run.hook_config.weights else None,
            "particle_diameter": run.dataset.structure.particle_diameter,
        }
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def variant_config(variant: str, denoiser: str, weights: str | None) -> HookConfig:
    """The hook's settings for a variant (written to JOB/credgui.toml)."""
    if variant in ("relion", "none", "relion_ext"):
        return HookConfig(denoiser="none", keep_inputs=False)
    if variant == "red":
        return HookConfig(denoiser=denoiser, weights=weights, lambda_low_res=RED_LOW_RES,
                          lambda_high_res=RED_HIGH_RES, lambda_max=1.0, keep_inputs=False)
    if variant == "cwred":
        return HookConfig(denoiser=denoiser, weights=weights, keep_inputs=False)
    raise ValueError(f"unknown variant {variant!r}")


def choose_denoiser(requested: str, weights: str | None) -> tuple[str, str | None, str | None]:
    """(denoiser, weights, one-line notice or None). ``auto``: the ``unet`` plugin with the
    shipped weights (resources/models/cwred_unet.pt) when present, else ``none``: then red and
    cwred reproduce RELION, and the report says so."""
    if requested != "auto":
        return requested, weights, None
    from credgui.resources import resource_path

    shipped = resource_path("models", "cwred_unet.pt")
    if shipped.is_file():
        return "unet", str(shipped), None
    return "none", None, ("no trained denoiser ships yet (resources/models/cwred_unet.pt): red and cwred run "
                          "with denoiser \"none\" and so reproduce RELION")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _search_roots() -> list[Path]:
    env = [Path(p) for p in os.environ.get(MODEL_DIRS_ENV, "").split(":") if p]
    return env + [Path(p) for p in sys.path if p]


def resolve_model(spec: str, base: Path, source: Path) -> Path:
    """The file an atomic-model spec names (see module docstring); InputError naming ``source``."""
    prefix, sep, rest = spec.partition(":")
    if not sep or len(prefix) == 1:  # a plain path (or a Windows drive letter)
        p = Path(spec)
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise InputError(source, f"model {spec!r} not found ({p})")
        return p
    rel = Path(rest)
    if not rest or rel.is_absolute() or ".." in rel.parts:
        raise InputError(source, f"model {spec!r}: a {prefix}: name must stay inside its folder "
                                 "(no '..', not absolute); give a plain path for other files")
    if prefix == "resources":
        from credgui.resources import resource_path

        candidates = [resource_path(*Path(rest).parts)]
        hint = "a credgui install ships it"
    elif prefix == "dockstring":
        candidates = [r / "dockstring" / "resources" / "targets" / f"{rest}_target.pdbqt" for r in _search_roots()]
        hint = "pip install --no-deps dockstring==0.3.4"
    elif prefix == "theseus":
        candidates = [THESEUS_DIR / rest]
        hint = "apt-get install theseus-examples"
    elif prefix == "mdanalysis":
        candidates = [r / "MDAnalysisTests" / "data" / rest for r in _search_roots()]
        hint = "pip install --no-deps MDAnalysisTests==2.11.0"
    else:
        raise InputError(source, f"model {spec!r}: unknown source {prefix!r} (resources, dockstring, theseus, mdanalysis or a path)")
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(source, f"model {spec!r} not found ({hint}, or add its folder to ${MODEL_DIRS_ENV})")


def _num(source: Path, key: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
        raise InputError(source, f"{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start}): not a TOML plan") from None
    except FileNotFoundError:
        raise InputError(path, "plan file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a plan file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror})") from None
    return parse_plan(text, path)


def parse_plan(text: str, path: Path) -> Plan:
    """Validate everything before any work starts (one-line InputError naming the plan)."""
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"invalid TOML ({exc})") from None
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise InputError(path, f"unknown key(s) {', '.join(unknown)}")
    snrs = raw.get("snrs")
    if not isinstance(snrs, list) or not snrs:
        raise InputError(path, "snrs must be a non-empty list of numbers")
    snrs = tuple(_num(path, "snrs", s, 1e-5, 100.0) for s in snrs)
    if len(set(snrs)) != len(snrs):
        raise InputError(path, "snrs holds a value twice")
    variants = tuple(raw.get("variants", DEFAULT_VARIANTS))
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants or len(set(variants)) != len(variants):
        raise InputError(path, f"variants must be distinct names from {', '.join(VARIANTS)}, got {list(variants)}")
    dataset = dict(DATASET_DEFAULTS)
    ds_raw = raw.get("dataset", {})
    if not isinstance(ds_raw, dict) or set(ds_raw) - set(DATASET_DEFAULTS):
        raise InputError(path, f"[dataset] keys: {', '.join(DATASET_DEFAULTS)}")
    dataset.update(ds_raw)
    dataset["defocus_um"] = tuple(float(v) for v in dataset["defocus_um"])
    refine = dict(REFINE_DEFAULTS)
    rf_raw = raw.get("refine", {})
    allowed = set(REFINE_DEFAULTS) | {"random_seed", "extra_args"}
    if not isinstance(rf_raw, dict) or set(rf_raw) - allowed:
        raise InputError(path, f"[refine] unknown key(s) {', '.join(sorted(set(rf_raw) - allowed))}")
    refine.update(rf_raw)
    refine.setdefault("random_seed", int(raw.get("seed", 1000)))
    structures = []
    entries = raw.get("structures")
    if not isinstance(entries, list) or not entries:
        raise InputError(path, "needs at least one [[structures]] entry (name, model)")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("model"), str):
            raise InputError(path, f"structures[{i}] needs name and model strings")
        name = e["name"]
        if not name.replace("-", "").replace("_", "").isalnum():
            raise InputError(path, f"structure name {name!r}: letters, digits, - and _ only (it names folders)")
        extra = set(e) - {"name", "model", "family", "particle_diameter", "notes"}
        if extra:
            raise InputError(path, f"structure {name}: unknown key(s) {', '.join(sorted(extra))}")
        diam = e.get("particle_diameter")
        structures.append(Structure(
            name=name, model=resolve_model(e["model"], path.parent, path), spec=e["model"],
            family=str(e.get("family", "")), particle_diameter=None if diam is None else _num(path, "particle_diameter", diam, 1.0),
        ))
    names = [s.name for s in structures]
    if len(set(names)) != len(names):
        raise InputError(path, "two structures share a name")
    weights = raw.get("weights") or None
    return Plan(
        path=path, text=text, title=str(raw.get("title", path.stem)), seed=int(raw.get("seed", 1000)),
        snrs=snrs, variants=variants, denoiser=str(raw.get("denoiser", "auto")), weights=weights,
        timeout_minutes=_num(path, "timeout_minutes", raw.get("timeout_minutes", 240), 0.1),
        dataset=dataset, refine=refine, structures=tuple(structures),
    )


def refine_kwargs(plan: Plan) -> dict[str, Any]:
    """RefineParams keyword arguments from [refine] (random_seed becomes --random_seed, the same
    for every variant: RELION's default seed is the clock, which splits the halves differently)."""
    kw = {k: v for k, v in plan.refine.items() if k not in ("random_seed", "extra_args")}
    extra = ["--random_seed", str(int(plan.refine["random_seed"]))] + [str(a) for a in plan.refine.get("extra_args", [])]
    kw["extra_args"] = tuple(extra)
    return kw


def as_dict(obj: Any) -> Any:
    """JSON-ready copy of plan dataclasses (paths as strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj
