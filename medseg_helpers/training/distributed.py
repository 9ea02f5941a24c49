"""DistributedDataParallel plumbing for ``torchrun``: process group, samplers, reductions.

Launch one process per GPU (or per CPU worker with the gloo backend)::

    torchrun --nproc_per_node 2 -m medseg_helpers.cli train --config run.yaml

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; `init_from_env` reads them. Each process then sees ``1 / world_size`` of
every epoch (``DistributedSampler``), DDP averages gradients, so with a per-process batch
of ``B`` the run behaves like one process with batch ``world_size * B``. Only rank 0 writes
checkpoints and logs; metrics are all-reduced so every rank takes the same decisions
(early stopping, plateau schedules).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "ShardSampler", "all_reduce_sum", "barrier", "cleanup", "get_dist_info",
           "init_from_env"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank: global rank, 0 for the main process.
        local_rank: rank on this machine (which GPU to use).
        world_size: number of processes (1 when not distributed).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def get_dist_info() -> DistInfo:
    """The current process group's rank and size, or a single-process `DistInfo`."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size())


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by ``torchrun``'s environment variables.

    Does nothing (returns a single-process `DistInfo`) when ``WORLD_SIZE`` is unset or 1,
    so the same script runs with and without ``torchrun``.

    Args:
        backend: ``"nccl"`` (GPUs) or ``"gloo"`` (CPU); default nccl when CUDA is available.

    Returns:
        This process's `DistInfo`. On CUDA the current device is set to ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not (dist.is_available() and dist.is_initialized()):
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend, init_method="env://")
    info = get_dist_info()
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    logger.info("rank %d of %d (local rank %d) joined", info.rank, info.world_size,
                info.local_rank)
    return info


def cleanup() -> None:
    """Leave the process group if one is active.

    Waits for every rank first, then collects garbage so that objects still holding the
    group (a dropped ``DistributedDataParallel`` wrapper) release it while the interpreter is
    fully alive: a gloo group torn down at interpreter exit can abort the process
    ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if get_dist_info().is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Sum ``tensor`` over ranks and return it on its original device (no-op in one process).

    Args:
        tensor: any shape; moved to ``device`` for the reduction (NCCL needs CUDA tensors).
        device: where the reduction happens; default the tensor's own device.
    """
    if not get_dist_info().is_distributed:
        return tensor
    work = tensor.detach().to(device or tensor.device).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``n`` gets items ``r, r + n, r + 2n, ...`` in order, without padding.

    For validation: unlike ``DistributedSampler`` it never repeats items to even out the
    shards, so summed metrics count every case exactly once.

    Args:
        dataset: anything with ``len``.
        info: the process's `DistInfo` (default `get_dist_info`).
    """

    def __init__(self, dataset: Sized, info: DistInfo | None = None) -> None:
        self.info = info or get_dist_info()
        self.indices = list(range(len(dataset)))[self.info.rank::self.info.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
