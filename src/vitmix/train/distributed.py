"""torchrun-launched DDP: process-group setup from the environment, rank helpers, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistContext", "ShardSampler", "all_reduce_max", "all_reduce_min", "all_reduce_sum",
           "init_distributed", "same_on_every_rank"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # A gloo group for small host-side agreements (a stop flag, RNG states): a collective on
    # the GPUs' group would make the host wait for the device queue first. None: the default
    # group is gloo already (CPU training) or there is one process.
    host_group: Any = None
    # Started by torchrun: a process group even for one process ("torchrun --nproc_per_node 1"
    # trains through DDP and NCCL as the many-GPU run will).
    launched: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process (a collective on the host)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.host_group)
        return bool(value[0])

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (picklable objects, gathered on the host)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.host_group)
        return out


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if requested != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto") -> DistContext:
    """One process per device; under torchrun (any WORLD_SIZE) a process group starts: gloo on
    CPUs, NCCL on GPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    host_group = None
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched:
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
                # Naming the GPU binds the NCCL communicator to it at once (NCCL otherwise
                # guesses it from the rank and warns that a guess can hang).
                dist.init_process_group(backend="nccl", device_id=device)
            else:
                dist.init_process_group(backend="gloo")
        if dist.get_backend() != "gloo":
            host_group = dist.new_group(backend="gloo")
    return DistContext(rank, world_size, local_rank, device, host_group, launched)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def all_reduce_max(values: list[float], ctx: DistContext) -> list[float]:
    """The largest of each value over all processes (the values themselves in one process)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def same_on_every_rank(value: int, ctx: DistContext) -> bool:
    """Whether every process holds the same integer (below 2**62); True in one process."""
    if not ctx.enabled:
        return True
    tensor = torch.tensor([value, -value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor[0]) == value and -int(tensor[1]) == value


class ShardSampler(Sampler[int]):
    """Evaluation shards: rank r takes indices r, r + W, ... so every image counts exactly once
    (DistributedSampler pads with repeats, which would bias the accuracy)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
