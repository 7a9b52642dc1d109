"""The one atomic writer (credgui._io) and every writer routed through it: planted symlinks at
guessable temp names are never followed, the result is a regular file, failures leave no trace."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from credgui._io import append_line, atomic_open
from credgui.config import HookConfig, parse_config, write_config
from credgui.relion.mrc import read_mrc, write_mrc_atomic
from credgui.relion.star import write_star_atomic


def _plant(target: Path, victim: Path) -> list[Path]:
    """Symlinks to ``victim`` at the temp names the old writers used (".NAME.PID.tmp" and kin)."""
    names = [f".{target.name}.{os.getpid()}.tmp", f".{target.name}.tmp", f".{target.name}.{os.getpid()}.tmp.npz"]
    links = []
    for name in names:
        link = target.parent / name
        link.symlink_to(victim)
        links.append(link)
    return links


WRITERS = {
    "mrc": (lambda p: write_mrc_atomic(p, np.ones((4, 4, 4), np.float32), 1.5), "map.mrc"),
    "config": (lambda p: write_config(p, HookConfig(denoiser="none")), "credgui.toml"),
    "star": (lambda p: write_star_atomic(p, "data_x\n_rlnA 1\n"), "x.star"),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_planted_temp_symlink_is_not_followed(tmp_path, kind):
    write, name = WRITERS[kind]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    job = tmp_path / "job"
    job.mkdir()
    target = job / name
    links = _plant(target, victim)
    write(target)
    assert victim.read_text() == "precious\n"
    assert target.is_file() and not target.is_symlink()
    assert all(link.is_symlink() and os.readlink(link) == str(victim) for link in links)
    leftovers = sorted(p.name for p in job.iterdir() if p not in links and p != target)
    assert leftovers == []


def test_symlink_at_final_path_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.mrc"
    victim.write_bytes(b"precious")
    target = tmp_path / "result.mrc"
    target.symlink_to(victim)
    write_mrc_atomic(target, np.zeros((2, 2, 2), np.float32))
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and read_mrc(target).shape == (2, 2, 2)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "credgui.toml"
    write_config(target, HookConfig(denoiser="none"))
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["credgui.toml"]
    assert parse_config(target).denoiser == "none"


def test_result_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_mrc_atomic(tmp_path / "m.mrc", np.zeros((2, 2, 2), np.float32))
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "m.mrc").st_mode & 0o777) == 0o640


def test_append_line_after_a_torn_line_starts_a_new_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"a": 1}\n{"b": 2, "trunc')
    append_line(log, '{"c": 3}')
    assert log.read_text().splitlines() == ['{"a": 1}', '{"b": 2, "trunc', '{"c": 3}']
    with pytest.raises(ValueError):
        append_line(log, "two\nlines")
