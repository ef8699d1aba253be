"""The CUDA math settings a run trains with: TF32 matrix products and cuDNN's autotuner.

PyTorch leaves both off by default for float32 reproducibility. For training they are what a GPU
is bought for: TF32 runs float32 matrix products and convolutions on the tensor cores (10 mantissa
bits in the products, float32 accumulation), and ``cudnn.benchmark`` times the convolution
algorithms once per input shape and keeps the fastest. Under bf16 or fp16 autocast most products
are half precision anyway; what stays float32 (the loss, norms the autocast lists keep in float32,
the optimizer) gains from TF32 all the same. A run sets them for its own duration and puts them
back afterwards; ``--no-tf32`` and ``--no-cudnn-benchmark`` turn them off, and the run folder
records what was used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["cuda_math"]


@contextlib.contextmanager
def cuda_math(device: torch.device, tf32: bool, cudnn_benchmark: bool) -> Iterator[dict]:
    """Within the block, TF32 and cuDNN benchmarking as asked on a CUDA ``device`` (nothing
    changes on a CPU); yields what the run folder records."""
    if device.type != "cuda":
        yield {}
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    cudnn.benchmark = cudnn_benchmark
    major, minor = torch.cuda.get_device_capability(device)
    try:
        yield {"gpu": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}",
               "tf32": tf32, "cudnn_benchmark": cudnn_benchmark,
               "cuda": torch.version.cuda, "torch": torch.__version__}
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = before
