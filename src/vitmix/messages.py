"""Error lines for people: a value quoted in a message is cut short, and a whole line is one line
of bounded length, whatever the value it quotes (a 2 MB --model-kwargs, a YAML alias bomb)."""

from __future__ import annotations

import re
from typing import Any

from .limits import MAX_MESSAGE_CHARS, MAX_QUOTED_CHARS

__all__ = ["abbreviate", "abbreviate_quotes", "one_line", "quoted"]

ELLIPSIS = "..."
# A quoted value in a message written by others (argparse's "invalid int value: '...'").
_LONG_QUOTE = re.compile(rf"'([^'\n]{{{MAX_QUOTED_CHARS}}})[^'\n]+'")


def abbreviate(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text``, or its first ``limit`` characters and "..." when it is longer."""
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def quoted(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: how a message shows a value it was given.

    A value that nests deeper than repr can follow is described by its type alone."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deep to show>"
    return abbreviate(text, limit)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line (line breaks become spaces), cut to ``limit`` characters."""
    return abbreviate(text.replace("\n", " "), limit)


def abbreviate_quotes(text: str) -> str:
    """``text`` with each value quoted in it ('...') cut to MAX_QUOTED_CHARS characters: for
    messages that quote values whole and have no apostrophes of their own (argparse's)."""
    return _LONG_QUOTE.sub(rf"'\1{ELLIPSIS}'", text)
