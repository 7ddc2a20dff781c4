"""torchrun / DDP plumbing, kept out of the training loop.

``python -m training`` runs unchanged as one process or under
``torchrun --nproc_per_node K`` (or ``python -m torch.distributed.run``): torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, and :func:`setup` joins the process group
(nccl on CUDA, gloo on CPU). Only rank 0 logs, plots and writes checkpoints; metrics are
summed across ranks with :func:`all_reduce_sum` so every rank reports the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cli import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank, how many there are, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Resolve the device and, when launched by torchrun, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (in place and returned); a no-op for one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's ``t`` along dim 0 (ranks may hold different lengths)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    # all_gather needs equal shapes: pad, gather, then cut each rank's padding off.
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def all_gather_objects(obj: object) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(torch.utils.data.Sampler[int]):
    """Rank ``rank``'s contiguous slice of ``range(n)``, *without* the padding
    DistributedSampler adds, so summed eval counts are exact and concatenating the ranks'
    outputs (:func:`all_gather_cat`) restores the original order."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        per, extra = divmod(n, world_size)
        start = rank * per + min(rank, extra)
        self.indices = list(range(start, start + per + (rank < extra)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
