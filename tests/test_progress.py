"""The one progress type (credgui.progress): what the simulator yields is what the CLI shows."""

from __future__ import annotations

import io

from credgui.cli import main
from credgui.progress import Progress, ProgressBar, format_duration
from credgui.simulate import iter_simulate_dataset

ARGS = dict(box=40, pixel_size=3.5, n_particles=20, snr=0.2, seed=3)
CLI = ["--box", "40", "--pixel-size", "3.5", "--particles", "20", "--snr", "0.2", "--seed", "3"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stage_lines(steps: list[Progress]) -> list[str]:
    """What ProgressBar prints off a terminal: a line when a stage completes."""
    out, stage = [], None
    for p in steps:
        if p.done == p.total and p.stage != stage:
            stage = p.stage
            out.append(f"{p.stage}: {p.message}")
    return out


def test_the_cli_bar_shows_the_progress_the_simulator_yields(tmp_path, demo_structure, capsys):
    steps = list(iter_simulate_dataset(demo_structure, tmp_path / "a", **ARGS))
    assert steps and all(isinstance(p, Progress) and p.task == "simulate" for p in steps)
    assert steps[-1].stage == "done" and steps[-1].result.directory == tmp_path / "a"
    capsys.readouterr()
    assert main(["simulate", str(demo_structure), "-o", str(tmp_path / "b"), *CLI]) == 0
    shown = [line for line in capsys.readouterr().err.splitlines() if ": " in line][:-1]  # last: the summary
    expected = [line.replace(str(tmp_path / "a"), str(tmp_path / "b")) for line in _stage_lines(steps)]
    assert shown == expected and shown[0].startswith("map: ") and shown[-1].startswith("done: wrote ")
    # on a terminal: one line redrawn with \r, ended at "done"
    term = _Terminal()
    bar = ProgressBar(stream=term)
    for p in steps:
        bar(p)
    text = term.getvalue()
    assert text.count("\r") == len(steps) and text.endswith("\n") and text.count("\n") == 1
    assert f"{steps[-1].total}/{steps[-1].total}" in text.rsplit("\r", 1)[1]


def test_durations_have_one_format():
    assert [format_duration(s) for s in (None, float("nan"), float("inf"), 0, 59.6, 61, 3600, 3725.2)] == [
        "-", "-", "-", "0:00", "1:00", "1:01", "1:00:00", "1:02:05"]
