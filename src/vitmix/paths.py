"""Checks of the paths people give for vitmix to write into, before any work is done."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_output_folder"]


def check_output_folder(path: str | Path, what: str) -> Path:
    """``path`` as a Path, after checking that it is or can become a folder: ValueError when
    it is a file or lies under one. ``what`` names it in the message (e.g. "--out")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} cannot be made: {parent} is a file")
            break
    return path
