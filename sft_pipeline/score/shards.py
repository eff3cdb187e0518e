"""Sharded scoring: pass 1 over row-group ranges on any engine's workers, one merge after.

Pass 1 is per row, so any split of the rows gives the same per-row arrays; duplicates and
the weighted score are resolved once, over all rows, in :func:`merge_shards`. The output is
therefore identical to the sequential :func:`~sft_pipeline.score.passes.score_conversations`
whatever the number of shards. Shard results are plain ``.npz`` files, so they travel
between processes or machines by path (flows/score.py runs the shards on Prefect's Dask
task runner).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sft_pipeline.config import ScoreConfig
from sft_pipeline.errors import VerificationError
from sft_pipeline.score.scorer import ChunkResult
from sft_pipeline.score.passes import concat_results, finish, open_conversations, pass_one, write_scores

_FLAG, _STAT = "flag:", "stat:"
_ARRAYS = ("keys", "sigs", "has_sig")


def plan_shards(sizes: list[int], n_shards: int) -> list[list[int]]:
    """Split row groups (of ``sizes`` rows) into at most ``n_shards`` contiguous, balanced runs.

    >>> plan_shards([10, 10, 10, 10], 2), plan_shards([5, 1, 1, 1], 3), plan_shards([1] * 10, 3)
    ([[0, 1], [2, 3]], [[0], [1], [2, 3]], [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]])
    """
    if not sizes:
        return [[]]
    total, shards, current, done = sum(sizes), [], [], 0
    for group, size in enumerate(sizes):
        current.append(group)
        done += size
        remaining_shards = n_shards - len(shards) - 1
        if remaining_shards and done >= total * (len(shards) + 1) / n_shards and group < len(sizes) - 1:
            shards.append(current)
            current = []
    return shards + [current] if current else shards


def shard_plan(conversations_path: str | Path, n_shards: int) -> list[list[int]]:
    """The row-group runs of ``conversations_path`` for ``n_shards`` workers."""
    meta = open_conversations(Path(conversations_path)).metadata
    return plan_shards([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], n_shards)


def score_shard(conversations_path: str | Path, row_groups: list[int], out_path: str | Path,
                cfg: ScoreConfig) -> dict:
    """Pass 1 over ``row_groups``; write the per-row arrays to ``out_path`` (.npz)."""
    result = pass_one(open_conversations(Path(conversations_path)), cfg, row_groups)
    arrays = {f"{_FLAG}{k}": v for k, v in result.flags.items()}
    arrays |= {f"{_STAT}{k}": v for k, v in result.stats.items()}
    arrays |= {k: getattr(result, k) for k in _ARRAYS if getattr(result, k) is not None}
    with open(out_path, "wb") as fh:
        np.savez(fh, **arrays)
    return {"path": str(out_path), "rows": len(next(iter(result.stats.values())))}


def load_shard(path: str | Path) -> ChunkResult:
    with np.load(path) as data:
        return ChunkResult(
            flags={k[len(_FLAG):]: data[k] for k in data.files if k.startswith(_FLAG)},
            stats={k[len(_STAT):]: data[k] for k in data.files if k.startswith(_STAT)},
            **{k: (data[k] if k in data.files else None) for k in _ARRAYS},
        )


def merge_shards(conversations_path: str | Path, shard_paths: list[str], out_path: str | Path,
                 cfg: ScoreConfig) -> dict:
    """Pass 2 from shard results (in row order): what ``score_conversations`` writes and returns."""
    pf = open_conversations(Path(conversations_path))
    first = concat_results([load_shard(p) for p in shard_paths])
    rows = len(next(iter(first.stats.values())))
    if rows != pf.metadata.num_rows:
        raise VerificationError(f"{conversations_path}: shards hold {rows} rows, the file {pf.metadata.num_rows}")
    return write_scores(pf, finish(pf, first, cfg), Path(out_path), cfg)
