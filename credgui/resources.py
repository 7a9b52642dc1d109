"""Files credgui ships (default structure, queue templates, denoiser weights): one lookup for all.

Why one function: in a source checkout, and in the editable install that install.sh makes, they
sit in the repository's ``resources/`` folder beside the package; a regular install (a wheel)
carries the same folder inside the package as ``credgui/_resources/`` (pyproject.toml maps it
there). Every caller asks ``resource_path`` and works in both cases.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resources_dir", "resource_path", "portable_resource", "resolve_resource", "RESOURCE_SCHEME"]

RESOURCE_SCHEME = "credgui:"

_PACKAGE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The folder holding ``structures/``, ``templates/``, ``models/``: the installed copy
    (``credgui/_resources``) when there is one, else the checkout's ``resources/``."""
    installed = _PACKAGE / "_resources"
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / "resources"


def resource_path(*parts: str) -> Path:
    """``resource_path("structures", "DRD2_6CM4_target.pdbqt")``: the path of a shipped file
    (it may not exist, e.g. weights not shipped yet: callers check). ValueError for a name
    that would leave the folder (``..``, an absolute path)."""
    rel = Path(*parts) if parts else Path()
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"resource name {str(rel)!r} leaves the resources folder")
    return resources_dir().joinpath(*parts)


def portable_resource(path: str | Path) -> str:
    """How a job's credgui.toml names a file: ``credgui:models/cwred_unet.pt`` for a file
    shipped with credgui (so moving or reinstalling credgui does not break a continue), else
    the path as given."""
    text = str(path)
    if text.startswith(RESOURCE_SCHEME):
        return text
    try:
        rel = Path(path).resolve().relative_to(resources_dir().resolve())
    except (ValueError, OSError):
        return text
    return RESOURCE_SCHEME + rel.as_posix()


def resolve_resource(value: str | Path) -> Path:
    """The file a ``portable_resource`` value names, in the credgui that runs now."""
    text = str(value)
    if text.startswith(RESOURCE_SCHEME):
        parts = [p for p in text[len(RESOURCE_SCHEME):].split("/") if p]
        if not parts or ".." in parts:
            raise ValueError(f"bad shipped-file reference {text!r}")
        return resource_path(*parts)
    return Path(value)
