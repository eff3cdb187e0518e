"""Scoring, sequential or with pass 1 sharded over a Dask cluster through prefect-dask.

With ``run.score_shards`` > 1 the row groups of conversations.parquet are split into that many
runs; a `score-shards` subflow on a :class:`prefect_dask.DaskTaskRunner` scores them on the
cluster's workers (``run.dask_address``, or a local cluster of ``score_shards`` processes),
and the usual cached ``score`` task merges them. The output is identical to the sequential
run, so the stage's cache key does not depend on the number of shards.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from sft_pipeline import constants as C
from sft_pipeline import stages
from sft_pipeline.config import PipelineConfig
from tasks import stages as T

SHARD_FLOW = "score-shards"


@flow(name=SHARD_FLOW)
def score_shards(cfg: PipelineConfig, ingest: dict) -> list[str]:
    """Pass 1 of scoring, one task per shard on this flow's task runner; the shard files in order."""
    upstream = stages.StageResult(**ingest)
    plan = stages.plan_score_shards(cfg, upstream)
    key = stages.expected_key(C.STAGE_SCORE, cfg, {"ingest": upstream})  # once, not per shard
    get_run_logger().info("scoring %d shards of row groups", len(plan))
    futures = T.score_shard.map(unmapped(cfg), unmapped(ingest), range(len(plan)), plan, unmapped(key))
    return [future.result() for future in futures]


def dask_runner(cfg: PipelineConfig):
    from prefect_dask import DaskTaskRunner

    if cfg.run.dask_address:
        return DaskTaskRunner(address=cfg.run.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.run.score_shards, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def sharded_inputs(cfg: PipelineConfig, ingest: dict) -> list[str] | None:
    """Shard files for the score task, or None when it runs sequentially or is already done."""
    if cfg.run.score_shards <= 1 or stages.is_done(cfg, "score", {"ingest": stages.StageResult(**ingest)}):
        return None
    return score_shards.with_options(task_runner=dask_runner(cfg))(cfg, ingest)
