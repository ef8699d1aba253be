"""JSON and YAML read within the bounds of :mod:`vitmix.limits`: the size of the text, how deep
it nests and, for YAML, how many values its aliases expand to are checked before any value is
built, so that a hostile file is one ValueError line instead of a RecursionError, a MemoryError
or an error line of millions of characters.

Python's JSON parser and PyYAML's composer recurse once per level of nesting, so the depth is
measured without them: on the brackets of the JSON text outside its strings, and on the event
stream of PyYAML's parser, which is a loop. Aliases are counted there too: an alias adds the
values of the node it names, as everything that later walks the loaded value (a check, a
message, a copy) meets them again.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from pathlib import Path
from typing import Any

import yaml

from .limits import MAX_NESTING_DEPTH, MAX_STRUCTURED_TEXT_BYTES, MAX_YAML_VALUES

__all__ = ["json_depth", "load_json", "load_yaml", "read_bounded_text"]

# A JSON string, escapes included: its brackets are text, not nesting.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def read_bounded_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``, read no further than the bound (a /dev/zero or a 10 GB file
    named as a config is refused after MAX_STRUCTURED_TEXT_BYTES, not read to its end).
    ``what`` names the file in the message, e.g. "config file"."""
    with open(path, "rb") as file:
        data = file.read(MAX_STRUCTURED_TEXT_BYTES + 1)
    if len(data) > MAX_STRUCTURED_TEXT_BYTES:
        raise ValueError(f"{what} {path} is larger than {MAX_STRUCTURED_TEXT_BYTES:,} bytes, the "
                         f"most vitmix reads of such a file")
    return data.decode("utf-8")  # a UnicodeDecodeError is a ValueError with its own words


def _check_size(text: str, what: str) -> None:
    if len(text) > MAX_STRUCTURED_TEXT_BYTES:
        raise ValueError(f"{what} is {len(text):,} characters long, more than the "
                         f"{MAX_STRUCTURED_TEXT_BYTES:,} allowed")


def _check_depth(depth: int, what: str) -> None:
    if depth > MAX_NESTING_DEPTH:
        raise ValueError(f"{what} nests more than {MAX_NESTING_DEPTH} levels deep; settings nest "
                         f"a few")


def json_depth(text: str) -> int:
    """How deep the arrays and objects of the JSON ``text`` nest (0 for a lone number)."""
    brackets = _JSON_BRACKET.findall(_JSON_STRING.sub("", text))
    return max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def load_json(text: str, what: str) -> Any:
    """``json.loads(text)`` once its size and depth are within bounds; ValueError naming
    ``what`` otherwise (json.JSONDecodeError, also a ValueError, for text that is no JSON)."""
    _check_size(text, what)
    _check_depth(json_depth(text), what)
    return json.loads(text)


def _check_yaml_events(text: str, what: str, loader: type) -> None:
    """Depth and expanded size of the YAML ``text``, from the parser's events alone."""
    # One entry per open collection: [its anchor, values counted before it, its depth, the
    # deepest level reached inside it].
    open_nodes: list[list] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, levels) of its node
    total, aliased = 0, False
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth = len(open_nodes) + 1
            _check_depth(depth, what)
            open_nodes.append([event.anchor, total, depth, depth])
            total += 1
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, before, depth, deepest = open_nodes.pop()
            if anchor is not None:
                anchors[anchor] = (total - before, deepest - depth + 1)
            if open_nodes:
                open_nodes[-1][3] = max(open_nodes[-1][3], deepest)
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                if any(node[0] == event.anchor for node in open_nodes):
                    raise ValueError(f"{what} holds a value that contains itself (the alias "
                                     f"*{event.anchor} inside &{event.anchor})")
                continue  # an undefined alias: the loader says so, with its line
            values, levels = anchors[event.anchor]
            aliased = True
            total += values
            reached = len(open_nodes) + levels
            _check_depth(reached, what)
            if open_nodes:
                open_nodes[-1][3] = max(open_nodes[-1][3], reached)
        if total > MAX_YAML_VALUES:
            how = " once its aliases are expanded" if aliased else ""
            raise ValueError(f"{what} holds more than {MAX_YAML_VALUES:,} values{how}; a "
                             f"config holds a few hundred")


def load_yaml(text: str, what: str, loader: type = yaml.SafeLoader) -> Any:
    """``yaml.load(text, loader)`` once its size, depth and expanded size are within bounds;
    ValueError naming ``what`` otherwise (yaml.YAMLError for text that is no YAML)."""
    _check_size(text, what)
    _check_yaml_events(text, what, loader)
    return yaml.load(text, Loader=loader)
