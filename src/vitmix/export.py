"""Export a deployed model to ONNX or TorchScript, and check the file against PyTorch.

The exported graph is the inference model: :func:`vitmix.deploy` has folded every SchemeMlp
(no CCA branch, no mixing logits), eval mode. After writing, the file is loaded back (by
onnxruntime for ONNX, by torch.jit.load for TorchScript) and run on random images; the largest
difference from the PyTorch model is reported, and exceeding the tolerance is an error.

The file is written under a temporary name and checked there: it appears at its path only once
it has passed, a failed export leaves nothing, and an existing file is replaced only when asked.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .accelerate import restore
from .checkpoints.io import atomic_write
from .layers.checks import NON_NEGATIVE_NUMBER, POSITIVE_INT, check_bool

__all__ = ["EXPORT_FORMATS", "ExportReport", "export_model"]

EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17


@dataclass
class ExportReport:
    path: Path
    format: str
    input_shape: tuple[int, ...]
    max_abs_diff: float  # largest |exported - PyTorch| on the check batch
    tolerance: float

    def __str__(self) -> str:
        return (f"exported {self.format} to {self.path} (input {self.input_shape}); "
                f"max |exported - PyTorch| = {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:g})")


def check_export_path(out: Path, overwrite: bool, how: str = "overwrite=True") -> None:
    """The file an export would write: its folder exists, and it is no folder itself, nor an
    existing file unless ``overwrite`` (``how`` says how to ask for that)."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"the folder {parent} for {out} does not exist")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the path of the file to write")
    if out.exists() and not check_bool("overwrite", overwrite):
        raise ValueError(f"{out} exists; pass {how} to replace it")


def _check_args(fmt: str, out: Path, img_size: int | tuple[int, int], in_chans: int,
                batch_size: int, tolerance: float, overwrite: bool) -> tuple[int, int]:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if isinstance(img_size, (tuple, list)):
        if len(img_size) != 2:
            raise ValueError(f"img_size must be a positive integer or a (height, width) pair, "
                             f"got {img_size!r}")
        size = tuple(POSITIVE_INT.check(f"img_size[{i}]", s) for i, s in enumerate(img_size))
    else:
        size = (POSITIVE_INT.check("img_size", img_size),) * 2
    POSITIVE_INT.check("in_chans", in_chans)
    POSITIVE_INT.check("batch_size", batch_size)
    NON_NEGATIVE_NUMBER.check("tolerance", tolerance)
    check_export_path(out, overwrite)
    return size


def _export_torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    # Tracing, not scripting: it takes any timm model. Its warnings about Python values that
    # become constants are expected here: the export is for one input size.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        traced = torch.jit.trace(model, example)
    traced.save(str(out))


def _run_torchscript(out: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=FutureWarning)
        loaded = torch.jit.load(str(out), map_location="cpu")
        return loaded(x)


def _export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    # The TorchScript-based exporter: it needs no packages beyond onnx, and its graphs keep a
    # dynamic batch axis through timm's models.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (example,), str(out), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["images"], output_names=["output"],
            dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}},
        )


def _run_onnx(out: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError as err:  # an optional dependency: say how to get it
        raise ValueError("checking an ONNX export needs onnxruntime: "
                         "pip install 'vitmix[export]'") from err
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(result)


def export_model(model: nn.Module, out: str | os.PathLike, fmt: str,
                 img_size: int | tuple[int, int] = 224, in_chans: int = 3,
                 batch_size: int = 2, tolerance: float = 1e-4, seed: int = 0,
                 overwrite: bool = False) -> ExportReport:
    """Write ``model`` (already deployed, on the CPU) as ``fmt`` to ``out`` and verify it.

    The check runs ``batch_size`` random images, a different batch size from the one traced
    with, so that a batch axis frozen into the graph is caught too. ``out`` appears only when
    the check passes; an existing ``out`` is refused unless ``overwrite``.
    """
    out = Path(out)
    size = _check_args(fmt, out, img_size, in_chans, batch_size, tolerance, overwrite)
    # The graph records the plain forward: a copy without the fused CPU kernels, whose
    # tracing would otherwise be checked against a differently computed eager output.
    model = restore(copy.deepcopy(model)).eval().cpu()
    example = torch.randn(1, in_chans, *size)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_chans, *size, generator=generator)
    with torch.no_grad():
        expected = model(x)
    diffs = []

    def export_and_check(tmp: str) -> None:
        path = Path(tmp)
        if fmt == "onnx":
            _export_onnx(model, example, path)
        else:
            _export_torchscript(model, example, path)
        got = _run_onnx(path, x) if fmt == "onnx" else _run_torchscript(path, x)
        if got.shape != expected.shape:
            raise ValueError(f"the exported {fmt} model returned shape {tuple(got.shape)}, "
                             f"PyTorch {tuple(expected.shape)}")
        diff = (got.float() - expected.float()).abs().max().item()
        if not diff <= tolerance:  # also catches NaN
            raise ValueError(f"the exported {fmt} model differs from PyTorch by {diff:.3g}, "
                             f"more than the tolerance {tolerance:g}; nothing was written")
        diffs.append(diff)

    atomic_write(out, export_and_check)
    return ExportReport(path=out, format=fmt, input_shape=tuple(x.shape),
                        max_abs_diff=diffs[0], tolerance=tolerance)
