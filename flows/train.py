"""Training handed to the `sft-train/<pool>` deployment on a GPU work pool, and that deployment's flow."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment

from flows.logs import library_logs
from sft_pipeline import cache, stages
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import STAGE_TRAIN
from sft_pipeline.errors import PipelineError
from sft_pipeline.stages import StageResult
from tasks.stages import stage_task

TRAIN_FLOW = "sft-train"
GPU_SLOTS = "gpu"  # global concurrency limit: `prefect gcl create gpu --limit <number of GPUs>`


@flow(name=TRAIN_FLOW)
def sft_train(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> StageResult:
    """Train on the tokenize stage's output (a shared path, or fetched from run.output_dir's URL)."""
    with library_logs():
        stage = stages.get(STAGE_TRAIN)
        with concurrency(GPU_SLOTS, occupy=cfg.train.num_processes):  # one slot per rank (one GPU each)
            return stage_task(stage, cfg, upstream)(stage.name, cfg, upstream)


@task(name="hand-off-training")
def hand_off_training(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> StageResult:
    """Run `sft-train` on the work pool named by ``train.work_pool``, wait, and read its result back."""
    name = f"{TRAIN_FLOW}/{cfg.train.work_pool}"
    get_run_logger().info("handing training to deployment %s", name)
    run = run_deployment(name=name, parameters={"cfg": cfg, "upstream": upstream}, timeout=None)
    if not run.state or not run.state.is_completed():
        raise PipelineError(f"training run {run.name} on {name} ended {run.state.name if run.state else 'unknown'}")
    stage = stages.get(STAGE_TRAIN)
    return cache.load(stage, cfg, cache.key(stage, cfg, upstream))
