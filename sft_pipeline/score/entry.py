"""The score stage's entry (sft_pipeline.stages), sequential or merging shards scored elsewhere.

With ``run.score_shards`` > 1 the flow splits the row groups of conversations.parquet into runs
(:func:`plan`), scores each on a Dask worker (:func:`run_shard`, into a scratch folder beside
the stage's output) and hands the shard files to :func:`run_stage`, which merges them. The
output is identical to the sequential run, so the key does not depend on the number of shards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sft_pipeline import storage
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import CONVERSATIONS_FILE, KEY_CHARS, SCORES_FILE, STAGE_INGEST, STAGE_SCORE
from sft_pipeline.files import disk_full_is_one_line
from sft_pipeline.score.shards import merge_shards, score_shard, shard_plan
from sft_pipeline.score.passes import score_conversations

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun

SHARDS = "shards"  # StageRun.extra key: the shard files to merge


def run_stage(run: StageRun) -> dict:
    src = run.inputs[STAGE_INGEST] / CONVERSATIONS_FILE
    shards = run.extra.get(SHARDS)
    if not shards:
        return score_conversations(src, run.out / SCORES_FILE, run.cfg.score)
    store = storage.store_of(run.cfg.run)
    local = [store.fetch_file(s) for s in shards]
    summary = merge_shards(src, local, run.out / SCORES_FILE, run.cfg.score)
    store.remove(scratch(run.key))
    return summary


def scratch(score_key: str) -> str:
    """Scratch folder of the score shards, beside the stage's output."""
    return f"{STAGE_SCORE}/.{score_key[:KEY_CHARS]}.shards"


def plan(cfg: PipelineConfig, ingest_dir: Path) -> list[list[int]]:
    """Row-group runs of the conversations for ``run.score_shards`` workers."""
    return shard_plan(ingest_dir / CONVERSATIONS_FILE, cfg.run.score_shards)


def run_shard(cfg: PipelineConfig, ingest_dir: Path, index: int, row_groups: list[int], score_key: str) -> str:
    """Pass 1 of scoring over ``row_groups``; the shard's local path, or its URL when outputs are on one.

    ``score_key`` is the score stage's key, computed once by the caller so that no shard worker
    hashes anything again.
    """
    rel = f"{scratch(score_key)}/shard-{index:05d}.npz"
    store = storage.store_of(cfg.run)
    final = store.folder(rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    try:
        with disk_full_is_one_line(f"score shard {index}", final.parent):
            score_shard(ingest_dir / CONVERSATIONS_FILE, row_groups, tmp, cfg.score)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return store.publish_file(rel)
