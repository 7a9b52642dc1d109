"""The hook's configuration: ``credgui.toml`` in the job directory, or ``$CREDGUI_CONFIG``.

Re-read at every hook call, so a change made while RELION runs (by hand or from the GUI's
lambda panel) takes effect at the next M-step. Writers go through ``write_config`` (atomic).

A file must say what it wants: one without ``denoiser`` (empty, or only ``pixel_size``, or an
editor's half-saved file) is an InputError, not a silent ``unet``; ``write_config`` (the
launch, the GUI) always writes it. No file at all means the defaults. ``load_config(...,
retry_s=...)`` re-reads a file that does not parse for a moment (an editor mid-save, as
editors do not write atomically) before failing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from credgui.errors import InputError

CONFIG_NAME = "credgui.toml"
CONFIG_ENV = "CREDGUI_CONFIG"


@dataclass(frozen=True)
class HookConfig:
    """Settings of the CW-RED M-step (eq. 17 of Kimanius et al. 2021).

    ``lambda_low_res``/``lambda_high_res`` (A): lambda is 0 at nominal resolutions worse than
    the first, ``lambda_max`` better than the second, linear in between (paper section 4.3).
    ``None`` means: the denoiser's own suggestion (its confidence curve), else 10 and 4.5 A.
    ``denoiser``: "unet" by default (the shipped model, resources/models/cwred_unet.pt);
    "none" gives RELION's own Gaussian prior.
    """

    denoiser: str = "unet"
    lambda_low_res: float | None = None
    lambda_high_res: float | None = None
    lambda_max: float = 1.0
    minres_map: int = 5
    """Shells below this get no prior (1/tau2 = 0, nor the denoiser term), as relion_refine's
    own M-step does (``--minres_map``, default 5). RELION does not pass it to an external
    reconstruct program, and relion_external_reconstruct regularises every shell: 0 reproduces
    that program, 5 reproduces plain relion_refine (measured: the maps differ otherwise)."""
    pixel_size: float | None = None
    """A/px. None: ``_rlnPixelSize`` of RELION's hook STAR (4.0/5.0), else the run's model STAR.
    When RELION's STAR gives one, it wins (it is the pixel size RELION reconstructs with)."""
    symmetry: str | None = None
    """RELION's point group (``--sym``): the denoiser term f(x~) is averaged over it (RELION
    symmetrises B and K, not the denoiser's output). None: ``_rlnSymmetryGroup`` of the run's
    newest ``*_sampling.star``, else C1. Written at launch from the job's ``--sym``."""
    device: str = "auto"
    keep_inputs: bool = False
    """True keeps RELION's three input arrays of every call (about 0.8 GB per call at box 256,
    pad 2); False (default) deletes them after a successful call only."""
    weights: str | None = None
    worker_socket: str | None = None
    """The warm worker's socket; "default": ``credgui worker``'s default (a private folder)."""
    worker_timeout_s: float | None = None
    """The most the hook waits for the worker per request (s), then denoises itself; None:
    20 s for info, a bound from the volume's size for denoise (``worker.denoise_timeout_s``)."""
    denoiser_options: dict[str, Any] = field(default_factory=dict)

    def validate(self, source: str | Path) -> "HookConfig":
        for key in ("lambda_low_res", "lambda_high_res", "pixel_size", "worker_timeout_s"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(source, f"{key} must be a finite number > 0 A, got {value}")
        if (
            self.lambda_low_res is not None
            and self.lambda_high_res is not None
            and self.lambda_high_res >= self.lambda_low_res
        ):
            raise InputError(
                source,
                f"lambda_high_res ({self.lambda_high_res} A) must be finer (smaller) than "
                f"lambda_low_res ({self.lambda_low_res} A)",
            )
        if isinstance(self.minres_map, bool) or not isinstance(self.minres_map, int) or self.minres_map < 0:
            raise InputError(source, f"minres_map must be a non-negative integer (Fourier shells), got {self.minres_map!r}")
        if self.symmetry is not None:
            from credgui.recon.symmetry import normalise_group

            try:
                normalise_group(self.symmetry)
            except ValueError as exc:
                raise InputError(source, f"symmetry: {exc}") from None
        if not 0.0 <= self.lambda_max <= 1.0:
            raise InputError(source, f"lambda_max must be in [0, 1], got {self.lambda_max}")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(HookConfig)}


def config_path(job_dir: str | Path) -> Path:
    """Where the hook looks: ``$CREDGUI_CONFIG`` if set, else ``JOB_DIR/credgui.toml``."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path(job_dir) / CONFIG_NAME


def load_config(job_dir: str | Path, *, retry_s: float = 0.0) -> HookConfig:
    """The configuration for a job directory; defaults when no file exists.

    ``retry_s``: for that long, a file that does not parse (or lacks ``denoiser``) is re-read
    every 0.1 s before its InputError is raised (an editor may be mid-save).
    """
    path = config_path(job_dir)
    deadline = time.monotonic() + retry_s
    while True:
        if not path.exists():
            if os.environ.get(CONFIG_ENV):
                raise InputError(path, f"configuration named by ${CONFIG_ENV} does not exist")
            return HookConfig()
        try:
            return parse_config(path)
        except _Unparsed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


class _Unparsed(InputError):
    """The file is not (yet) a whole configuration: worth a re-read while an editor saves."""


def parse_config(path: str | Path) -> HookConfig:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise _Unparsed(path, f"not UTF-8 text (byte {exc.start}): not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise _Unparsed(path, f"invalid TOML ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    if "denoiser" not in raw:
        what = "is empty" if not raw else f"sets {', '.join(sorted(raw))} but not denoiser"
        raise _Unparsed(path, f"{what}: say what the hook should do, e.g. denoiser = \"unet\" "
                              "(the shipped prior) or denoiser = \"none\" (RELION's own M-step)")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise InputError(path, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("lambda_low_res", "lambda_high_res", "lambda_max", "pixel_size", "worker_timeout_s"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InputError(path, f"{key} must be a number, got {value!r}")
            value = float(value)
        elif key == "keep_inputs" and not isinstance(value, bool):
            raise InputError(path, f"keep_inputs must be true or false, got {value!r}")
        elif key == "denoiser_options" and not isinstance(value, dict):
            raise InputError(path, "denoiser_options must be a table")
        elif key in ("denoiser", "device", "weights", "worker_socket", "symmetry") and not isinstance(value, str):
            raise InputError(path, f"{key} must be a string, got {value!r}")
        values[key] = value
    return HookConfig(**values).validate(path)


def config_to_dict(config: HookConfig) -> dict[str, Any]:
    """TOML-ready dict (None values left out, as TOML has no null)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None and v != {}}


def write_config(path: str | Path, config: HookConfig) -> None:
    """Validate and write ``config`` atomically (temp file + rename)."""
    path = Path(path)
    config.validate(path)
    from credgui._io import write_text_atomic

    write_text_atomic(path, tomli_w.dumps(config_to_dict(config)))
