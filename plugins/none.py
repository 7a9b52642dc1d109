"""The ``none`` denoiser: no learned prior, RELION's Gaussian (Tikhonov) prior only, eq. (11)."""

from __future__ import annotations

from typing import Any

NAME = "none"


def create(options: dict[str, Any]) -> None:
    """``None`` tells the hook to skip the denoiser: lambda is 0 and no denoised map is written."""
    return None
