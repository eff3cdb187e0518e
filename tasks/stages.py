"""One Prefect task for every stage: run it through the library's cache owner, return its typed result."""

from __future__ import annotations

from typing import Any

from prefect import Task, get_run_logger, task
from prefect.tasks import exponential_backoff

from sft_pipeline import cache, stages
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import STAGE_SCORE
from sft_pipeline.score import entry as score_entry
from sft_pipeline.stages import StageResult
from tasks.caching import result_storage, retry_condition, stage_policy

RETRIES = 2
BACKOFF_S = 10
TASK_OPTIONS = dict(
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_S),
    retry_jitter_factor=0.5,
    persist_result=True,
)


@task(**TASK_OPTIONS)
def run_stage(stage: str, cfg: PipelineConfig, upstream: dict[str, StageResult], **extra: Any) -> StageResult:
    result = cache.run(stages.get(stage), cfg, upstream, **extra)
    get_run_logger().info("%s -> %s %s", stage, result.url or result.out_dir, result.counts_line())
    return result


def stage_task(stage: stages.Stage, cfg: PipelineConfig, upstream: dict[str, StageResult]) -> Task:
    """``run_stage`` named after the stage, on its content-addressed cache, retries and result storage.

    A cache record whose output the library does not find complete is not served: the task
    runs again (``refresh_cache``) and the library recomputes what is missing.
    """
    return run_stage.with_options(
        name=stage.name, cache_policy=stage_policy(stage.name, cfg), result_storage=result_storage(cfg),
        retry_condition_fn=retry_condition(stage), refresh_cache=not cache.is_complete(stage, cfg, upstream))


@task(name="score-shard", retry_condition_fn=retry_condition(stages.get(STAGE_SCORE)), **TASK_OPTIONS)
def score_shard(cfg: PipelineConfig, ingest: StageResult, index: int, row_groups: list[int], score_key: str) -> str:
    return score_entry.run_shard(cfg, cache.output_folder(cfg, ingest), index, row_groups, score_key)
