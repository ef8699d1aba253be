"""Checks of the paths people give vitmix to read from or write into, before any work is done."""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["check_input_file", "check_output_folder", "kind_of"]

# What a path that exists may be besides a file or a folder, for messages: /dev/null exists, so
# "does not exist" is wrong about it, and "a file" is not what a person calls it.
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def kind_of(path: str | Path) -> str:
    """What ``path`` is, in words: "a file", "a folder", "a character device", ...; "missing"
    when nothing is there."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return "missing"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, after checking that it is a regular file: FileNotFoundError when
    nothing is there, ValueError naming what it is otherwise (a folder, a device, a pipe, which
    would be read forever or not at all). ``what`` names it, e.g. "config file"."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "missing":
        raise FileNotFoundError(f"{what} {path} does not exist")
    if kind != "a file":
        raise ValueError(f"{what} {path} is {kind}, not a file")
    return path


def check_output_folder(path: str | Path, what: str) -> Path:
    """``path`` as a Path, after checking that it is or can become a folder: ValueError when
    it is a file or lies under one. ``what`` names it in the message (e.g. "--out")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is {kind_of(path)}; give a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} cannot be made: {parent} is {kind_of(parent)}")
            break
    return path
