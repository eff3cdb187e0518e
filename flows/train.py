"""Training, in-process or handed to the `sft-train/<pool>` deployment on a GPU work pool."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment

from sft_pipeline.config import PipelineConfig, load_config
from sft_pipeline.errors import PipelineError
from sft_pipeline.stages import StageResult, expected_key, load_result
from tasks import stages as T
from tasks.caching import result_storage, stage_policy

TRAIN_FLOW = "sft-train"
GPU_SLOTS = "gpu"  # global concurrency limit: `prefect gcl create gpu --limit <number of GPUs>`


def _train_task(cfg: PipelineConfig):
    return T.train.with_options(cache_policy=stage_policy("train", cfg), result_storage=result_storage(cfg))


@flow(name=TRAIN_FLOW)
def sft_train(config: str, tokenize: dict, overrides: list[str] | None = None) -> dict:
    """Train on the tokenized stage output (a shared path, or fetched from run.output_dir's URL)."""
    cfg = load_config(config, overrides)
    with concurrency(GPU_SLOTS, occupy=cfg.train.num_processes):  # one slot per rank (one GPU each)
        return _train_task(cfg)(cfg, tokenize)


def train_stage(cfg: PipelineConfig, tokenized: dict, config: str, overrides: list[str] | None) -> dict:
    """Run training here, or on the work pool named by ``train.work_pool`` and wait for it."""
    if not cfg.train.work_pool:
        return _train_task(cfg)(cfg, tokenized)
    name = f"{TRAIN_FLOW}/{cfg.train.work_pool}"
    get_run_logger().info("handing training to deployment %s", name)
    run = run_deployment(
        name=name,
        parameters={"config": config, "overrides": overrides or [], "tokenize": tokenized},
        timeout=None,
    )
    if not run.state or not run.state.is_completed():
        raise PipelineError(f"training run {run.name} on {name} ended {run.state.name if run.state else 'unknown'}")
    key = expected_key("train", cfg, {"tokenize": StageResult(**tokenized)})
    return load_result(cfg, "train", key).to_dict()
