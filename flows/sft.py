"""The `sft` flow: ingest -> score -> filter -> tokenize -> train -> evaluate.

Every stage is a cached, retryable task keyed by content, so re-running with a new
filter threshold recomputes only what the threshold changed. ``until`` stops after a
stage: the `sft/filter` deployment is this flow with ``until="filter"``.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.states import Completed

from flows.publish import publish_filter, publish_report, publish_summary, publish_tokenize
from flows.score import sharded_inputs
from flows.train import train_stage
from sft_pipeline.config import load_config
from tasks.caching import result_storage, stage_policy
from tasks import stages as T

DEFAULT_CONFIG = "deployments/configs/default.yaml"
NOT_PROMOTED = "NotPromoted"
Stage = Literal["ingest", "score", "filter", "tokenize", "train", "evaluate"]


def configured(task, stage: str, cfg):
    """Bind a task to this run's content-addressed cache and result storage."""
    return task.with_options(cache_policy=stage_policy(stage, cfg), result_storage=result_storage(cfg))


@flow(name="sft")
def sft(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, until: Stage = "evaluate"):
    """Run the pipeline on ``config`` (a YAML path) with ``key.sub=value`` overrides."""
    cfg = load_config(config, overrides)
    results: dict[str, dict] = {}
    results["ingest"] = configured(T.ingest, "ingest", cfg)(cfg)
    if until != "ingest":
        shards = sharded_inputs(cfg, results["ingest"])
        results["score"] = configured(T.score, "score", cfg)(cfg, results["ingest"], shards)
    if until not in ("ingest", "score"):
        results["filter"] = configured(T.filter_, "filter", cfg)(cfg, results["score"])
        publish_filter(cfg, results["filter"])
    if until in ("tokenize", "train", "evaluate"):
        results["tokenize"] = configured(T.tokenize, "tokenize", cfg)(cfg, results["filter"])
        publish_tokenize(cfg, results["tokenize"])
    if until in ("train", "evaluate"):
        results["train"] = train_stage(cfg, results["tokenize"], config, overrides)
    if until == "evaluate":
        results["evaluate"] = configured(T.evaluate, "evaluate", cfg)(cfg, **results)
        publish_report(cfg, results["evaluate"])
    publish_summary(results)
    return _final_state(results)


def _final_state(results: dict[str, dict]):
    evaluation = results.get("evaluate")
    if evaluation and not evaluation["counts"].get("promoted", True):
        failed = ", ".join(evaluation["counts"].get("failed_checks", [])) or "regression gate"
        get_run_logger().warning("tuned model NOT promoted: %s", failed)
        return Completed(name=NOT_PROMOTED, message=f"tuned model not promoted: {failed}", data=results)
    return results
