"""The checksum of a file's tensors: flipped bits in a weights file are refused, not evaluated.

Neither safetensors nor torch.load checks the bytes it reads (a .pth holds CRC-32s, which
torch.load does not verify): a weights file with a few flipped bytes loads and evaluates
silently, a few points of accuracy lower. vitmix writes the SHA-256 of its tensors beside them
(safetensors metadata, a training checkpoint's own key), in the same atomic write, and
verifies it on every load.

The digest is over every tensor in the order of its name: for each, one line of JSON
``[name, dtype, shape, number of bytes]`` then its bytes, C-contiguous. In a training checkpoint
a tensor's name is its path of keys joined by "/" (``model/head.weight``,
``optimizer/state/0/exp_avg``), so the optimizer state is covered too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..limits import MAX_NESTING_DEPTH

__all__ = ["CHECKSUM_KEY", "checkpoint_digest", "tensors_digest", "unverified_note",
           "verify_digest"]

# The key under which the digest is kept, in safetensors metadata and in a checkpoint dict.
CHECKSUM_KEY = "tensors_sha256"


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    # As bytes: NumPy has no bfloat16, and the bytes are what the file holds.
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The SHA-256, in hex, of named tensors (see the module's docstring)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        header = [name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape),
                  tensor.numel() * tensor.element_size()]
        digest.update(json.dumps(header).encode() + b"\n")
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _named_tensors(value: Any, path: str, depth: int) -> Iterator[tuple[str, torch.Tensor]]:
    # A training checkpoint is a few levels deep; a file nested deeper is no vitmix checkpoint.
    if depth > MAX_NESTING_DEPTH:
        raise ValueError(f"nests deeper than {MAX_NESTING_DEPTH} levels at {path}")
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _named_tensors(item, f"{path}/{key}" if path else str(key), depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _named_tensors(item, f"{path}/{i}", depth + 1)


def checkpoint_digest(checkpoint: Mapping) -> str:
    """The digest of every tensor in a training checkpoint but its own key; ValueError for a
    structure too deep to be one."""
    named = dict(_named_tensors({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY},
                                "", 0))
    return tensors_digest(named)


def verify_digest(recorded: Any, computed: str, source: str) -> None:
    """ValueError naming ``source`` (the file) when its recorded digest is not ``computed``."""
    if recorded != computed:
        shown = recorded[:16] if isinstance(recorded, str) else repr(recorded)[:16]
        raise ValueError(f"{source} is damaged: its tensors do not match the checksum it was "
                         f"written with ({CHECKSUM_KEY} {shown}... recorded, {computed[:16]}... "
                         f"now); the file changed after it was written, so its weights are not "
                         f"used")


def unverified_note(source: str) -> str:
    """What to tell about a file without a checksum: it loads, unverified."""
    return (f"{source} holds no checksum of its tensors (written by an earlier vitmix or by "
            f"another tool); its weights load unverified")
