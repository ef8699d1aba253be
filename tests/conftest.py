"""Fixtures shared by the test modules (the helpers behind them: tiny_runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_runs import make_image_tree


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """train/ (8 per class, plus one unreadable file) and val/ (4 per class) of grey PNGs."""
    root = make_image_tree(tmp_path_factory.mktemp("shapes"))
    (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    return root
