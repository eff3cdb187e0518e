"""Score pass 1 sharded over a Dask cluster through prefect-dask (``run.score_shards`` > 1).

The row groups of conversations.parquet are split into that many runs; a `score-shards` subflow
on a :class:`prefect_dask.DaskTaskRunner` scores them on the cluster's workers
(``run.dask_address``, or a local cluster of ``score_shards`` processes), and the usual cached
``score`` task merges them (sft_pipeline.score.entry). The output is identical to the
sequential run, so the stage's key does not depend on the number of shards.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from sft_pipeline import cache, stages
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import STAGE_INGEST, STAGE_SCORE
from sft_pipeline.score import entry as score_entry
from sft_pipeline.stages import StageResult
from tasks.stages import score_shard

SHARD_FLOW = "score-shards"


@flow(name=SHARD_FLOW)
def score_shards(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> list[str]:
    """Pass 1 of scoring, one task per shard on this flow's task runner; the shard files in order."""
    ingest = upstream[STAGE_INGEST]
    plan = score_entry.plan(cfg, cache.output_folder(cfg, ingest))
    key = cache.key(stages.get(STAGE_SCORE), cfg, upstream)  # once, not per shard
    get_run_logger().info("scoring %d shards of row groups", len(plan))
    futures = score_shard.map(unmapped(cfg), unmapped(ingest), range(len(plan)), plan, unmapped(key))
    return [future.result() for future in futures]


def dask_runner(cfg: PipelineConfig):
    from prefect_dask import DaskTaskRunner

    if cfg.run.dask_address:
        return DaskTaskRunner(address=cfg.run.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.run.score_shards, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def shard_inputs(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> dict[str, list[str]]:
    """``{"shards": files}`` for the score task, or nothing when it runs sequentially or is already done."""
    if cfg.run.score_shards <= 1 or cache.is_complete(stages.get(STAGE_SCORE), cfg, upstream):
        return {}
    return {score_entry.SHARDS: score_shards.with_options(task_runner=dask_runner(cfg))(cfg, upstream)}
