"""Find denoiser plugins: modules in the plugin folders, and the ``credgui.denoisers`` entry points.

A plugin module defines ``NAME: str`` and ``create(options: dict) -> Denoiser | None``
(``None`` means "no learned prior"). Plugin folders, first match wins:
``$CREDGUI_PLUGIN_PATH`` (os.pathsep-separated), ``~/.config/credgui/plugins``, and the
``plugins/`` folder shipped beside the ``credgui`` package. An entry point in the group
``credgui.denoisers`` names such a ``create`` callable (its entry-point name is the NAME).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from credgui.denoise.base import Denoiser

ENTRY_POINT_GROUP = "credgui.denoisers"
Factory = Callable[[dict[str, Any]], "Denoiser | None"]


def plugin_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("CREDGUI_PLUGIN_PATH", "").split(os.pathsep) if p]
    dirs.append(Path.home() / ".config" / "credgui" / "plugins")
    dirs.append(Path(__file__).resolve().parents[2] / "plugins")
    return [d for d in dirs if d.is_dir()]


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"credgui_plugin_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def available_denoisers() -> dict[str, EntryPoint | str]:
    """name -> entry point, or a plugin file path; both loaded only when used."""
    found: dict[str, EntryPoint | str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    for folder in plugin_dirs():
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            found.setdefault(_plugin_name(path), str(path))
    return found


def _plugin_name(path: Path) -> str:
    """The plugin's NAME, read without importing (plugins may import torch)."""
    for line in path.read_text().splitlines():
        if line.startswith("NAME") and "=" in line:
            return line.split("=", 1)[1].strip().strip("\"'")
    return path.stem


def create_denoiser(name: str, options: dict[str, Any] | None = None) -> Denoiser | None:
    """Build the denoiser ``name``; ValueError lists the known names when it is unknown."""
    options = options or {}
    if name == "none":
        return None
    found = available_denoisers()
    if name not in found:
        raise ValueError(f"unknown denoiser {name!r}; available: {', '.join(sorted(found))}")
    target = found[name]
    factory: Factory = _load_module(Path(target)).create if isinstance(target, str) else target.load()
    return factory(options)
