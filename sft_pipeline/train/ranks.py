"""Which training process this is, under ``accelerate launch`` (torchrun) or alone.

torchrun sets ``RANK``/``WORLD_SIZE`` in every rank's environment before Python
starts, so these work before the process group exists (the Trainer creates it).
Alone, a process is rank 0 of a world of 1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from sft_pipeline.files import write_json

RANK_ENV = "RANK"
REPORT_PREFIX = "rank-"  # rank-<n>.json: what a launched rank failed with
WORLD_SIZE_ENV = "WORLD_SIZE"


def world_size() -> int:
    """Number of training processes (1 outside a launcher)."""
    return int(os.environ.get(WORLD_SIZE_ENV, 1))


def is_main_rank() -> bool:
    return rank() == 0


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


def rank() -> int:
    return int(os.environ.get(RANK_ENV, 0))


def report_failure(folder: Path, exc: BaseException) -> dict:
    """Write what this rank died of to ``folder/rank-<rank>.json`` for the launcher, and return it.

    The launcher cannot see exception objects, and the log holds every rank's errors,
    including the peers' "connection closed" that follow the real one (see
    :func:`first_failure`). Judging ``transient`` here keeps the type and cause chain.
    """
    from sft_pipeline.errors import PipelineError
    from sft_pipeline.train.failures import RankOutOfMemory, is_transient

    report = {
        "rank": rank(),
        "time": time.monotonic(),  # one clock for every process of the machine
        "type": type(exc).__name__,
        "message": (str(exc).strip().splitlines() or [""])[0],
        "pipeline_error": isinstance(exc, PipelineError),
        "out_of_memory": isinstance(exc, RankOutOfMemory),
        "transient": is_transient(exc),
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{REPORT_PREFIX}{report['rank']}.json", report)
    return report


def first_failure(folder: Path, rank_of_cause: int | None = None) -> dict | None:
    """The report of the rank torchrun names as the root cause, else the earliest report in ``folder``.

    None when that rank (or, with no rank named, any rank) reported nothing: killed, or crashed in C.
    """
    reports = [json.loads(p.read_text()) for p in folder.glob(f"{REPORT_PREFIX}*.json")]
    if rank_of_cause is not None:
        reports = [r for r in reports if r["rank"] == rank_of_cause]
    return min(reports, key=lambda r: r["time"]) if reports else None


def clear_failures(folder: Path) -> None:
    for path in folder.glob(f"{REPORT_PREFIX}*.json"):
        path.unlink()
