"""One Prefect task per stage. Each: call one library runner, log counts, return a small dict."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from sft_pipeline import stages
from sft_pipeline.config import PipelineConfig
from sft_pipeline.train import is_transient
from tasks.caching import retry_transient, retry_when

RETRIES = 2
BACKOFF_S = 10
TASK_OPTIONS = dict(
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_S),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    persist_result=True,
)


def _done(result: stages.StageResult) -> dict:
    get_run_logger().info("%s -> %s %s", result.stage, result.url or result.out_dir, result.counts_line())
    return result.to_dict()


@task(name="ingest", **TASK_OPTIONS)
def ingest(cfg: PipelineConfig) -> dict:
    return _done(stages.run_ingest(cfg))


@task(name="score", **TASK_OPTIONS)
def score(cfg: PipelineConfig, ingest: dict, shards: list[str] | None = None) -> dict:
    return _done(stages.run_score(cfg, stages.StageResult(**ingest), shards))


@task(name="score-shard", **TASK_OPTIONS)
def score_shard(cfg: PipelineConfig, ingest: dict, index: int, row_groups: list[int], score_key: str) -> str:
    return stages.run_score_shard(cfg, stages.StageResult(**ingest), index, row_groups, score_key)


@task(name="filter", **TASK_OPTIONS)
def filter_(cfg: PipelineConfig, score: dict) -> dict:
    return _done(stages.run_filter(cfg, stages.StageResult(**score)))


@task(name="tokenize", **TASK_OPTIONS)
def tokenize(cfg: PipelineConfig, filter: dict) -> dict:
    return _done(stages.run_tokenize(cfg, stages.StageResult(**filter)))


# Training retries only errors known to be transient (network, interconnect); out-of-memory
# is handled inside the stage (smaller micro-batch), everything else fails at once.
@task(name="train", **{**TASK_OPTIONS, "retry_condition_fn": retry_when(is_transient)})
def train(cfg: PipelineConfig, tokenize: dict) -> dict:
    return _done(stages.run_train(cfg, stages.StageResult(**tokenize)))


@task(name="evaluate", **TASK_OPTIONS)
def evaluate(cfg: PipelineConfig, ingest: dict, score: dict, filter: dict, tokenize: dict, train: dict) -> dict:
    upstream = {name: stages.StageResult(**res) for name, res in
                dict(ingest=ingest, score=score, filter=filter, tokenize=tokenize, train=train).items()}
    return _done(stages.run_evaluate(cfg, upstream))
