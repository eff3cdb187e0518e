"""The `sft` flow: every stage of ``sft_pipeline.stages.STAGES`` in order, through ``until``.

Each stage is one cached, retryable task keyed by content (see sft_pipeline/stages.py), so a
re-run with a new filter threshold recomputes only what the threshold changed. The
`sft/filter` deployment is this flow with ``until="filter"``.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import Completed

from flows.logs import library_logs
from flows.publish import publish_stage, publish_summary
from flows.score import shard_inputs
from flows.train import hand_off_training
from sft_pipeline import stages
from sft_pipeline.config import PipelineConfig, load_config
from sft_pipeline.constants import STAGE_EVALUATE, STAGE_SCORE, STAGE_TRAIN
from sft_pipeline.stages import StageResult
from tasks.stages import stage_task

DEFAULT_CONFIG = "deployments/configs/default.yaml"
PROMOTED = "promoted"
STATE_NAMES = {"not_promoted": "NotPromoted", "inconclusive": "Inconclusive"}  # evaluate verdict -> flow state
StageName = Literal[stages.NAMES]  # type: ignore[valid-type]  # the deployment's parameter schema lists them


@flow(name="sft")
def sft(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, until: StageName = "evaluate"):
    """Run the pipeline on ``config`` (a YAML path) with ``key.sub=value`` overrides."""
    with library_logs():
        cfg = load_config(config, overrides)
        results: dict[str, StageResult] = {}
        for stage in stages.upto(until):
            results[stage.name] = run_stage(stage, cfg, results)
            publish_stage(cfg, results[stage.name])
        publish_summary(results)
        track(cfg, results)
        return final_state(results)


def track(cfg: PipelineConfig, results: dict[str, StageResult]) -> None:
    """One MLflow run per pipeline run (``run.tracking_uri``): config, every stage's counts, the evaluation.

    The work is done by now: a store that is down or fails is a warning, never a failed run or a retry.
    """
    if cfg.run.tracking_uri:
        from prefect.runtime import flow_run

        from sft_pipeline.tracking import log_if_possible

        run_id = log_if_possible(cfg, {name: r.counts for name, r in results.items()}, flow_run.name or "sft")
        if run_id is not None:
            get_run_logger().info("logged to MLflow at %s (run %s)", cfg.run.tracking_uri, run_id)


def run_stage(stage: stages.Stage, cfg: PipelineConfig, results: dict[str, StageResult]) -> StageResult:
    """One stage as a task, on the results of the stages it reads; waits for it."""
    return submit_stage(stage, cfg, {name: results[name] for name in stage.reads}).result()


def submit_stage(stage: stages.Stage, cfg: PipelineConfig, upstream: dict[str, StageResult]) -> PrefectFuture:
    """Submit one stage's task (training to the GPU pool when ``train.work_pool`` is set; scoring sharded)."""
    if stage.name == STAGE_TRAIN and cfg.train.work_pool:
        return hand_off_training.submit(cfg, upstream)
    extra = shard_inputs(cfg, upstream) if stage.name == STAGE_SCORE else {}
    return stage_task(stage, cfg, upstream).submit(stage.name, cfg, upstream, **extra)


def verdict_note(results: dict[str, StageResult]) -> tuple[str, str] | None:
    """(state name, message) for an evaluation verdict other than promoted; None when there is none."""
    evaluation = results.get(STAGE_EVALUATE)
    verdict = evaluation.details.get("verdict") if evaluation is not None else None
    if verdict in (None, PROMOTED):
        return None
    failed = ", ".join(evaluation.details.get("failed_checks") or []) or "regression gate"
    return STATE_NAMES.get(verdict, verdict), f"tuned model {verdict.replace('_', ' ')}: {failed}"


def final_state(results: dict[str, StageResult]):
    """The results, or a Completed state named after a verdict other than promoted."""
    note = verdict_note(results)
    if note is None:
        return results
    name, message = note
    get_run_logger().warning(message)
    return Completed(name=name, message=message, data=results)
