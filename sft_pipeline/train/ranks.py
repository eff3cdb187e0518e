"""Which training process this is, under ``accelerate launch`` (torchrun) or alone.

torchrun sets ``RANK``/``WORLD_SIZE`` in every rank's environment before Python
starts, so these work before the process group exists (the Trainer creates it).
Alone, a process is rank 0 of a world of 1.
"""

from __future__ import annotations

import os

import torch

RANK_ENV = "RANK"
WORLD_SIZE_ENV = "WORLD_SIZE"


def world_size() -> int:
    """Number of training processes (1 outside a launcher)."""
    return int(os.environ.get(WORLD_SIZE_ENV, 1))


def is_main_rank() -> bool:
    return int(os.environ.get(RANK_ENV, 0)) == 0


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def sum_and_max(accelerator, summed: list[int], maxed: list[int]) -> tuple[list[int], list[int]]:
    """Totals of ``summed`` and maxima of ``maxed`` over all ranks (the values themselves alone)."""
    if accelerator.num_processes == 1:
        return summed, maxed
    device = accelerator.device
    totals = accelerator.reduce(torch.tensor(summed, dtype=torch.int64, device=device), reduction="sum")
    peaks = accelerator.gather(torch.tensor([maxed], dtype=torch.int64, device=device)).amax(dim=0)
    return [int(x) for x in totals.tolist()], [int(x) for x in peaks.tolist()]
