"""Content-addressed cache policy and retry rules shared by every stage task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.locking.filesystem import FileSystemLockManager

from sft_pipeline.config import PipelineConfig
from sft_pipeline.errors import DETERMINISTIC_ERRORS
from sft_pipeline.stages import expected_key

RESULTS_SUBDIR = ".prefect-results"
LOCKS_SUBDIR = ".prefect-locks"
CONFIG_PARAM = "cfg"


@dataclass
class StageCachePolicy(CachePolicy):
    """Key = digest of the stage's input *content* + its config section + its code version.

    Unlike Prefect's DEFAULT policy (which includes the run id), two runs on the same
    inputs share every stage result, and a changed threshold only invalidates the
    stages whose inputs actually changed.
    """

    stage: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        cfg = PipelineConfig.model_validate(inputs[CONFIG_PARAM])
        upstream = {name: value for name, value in inputs.items() if name != CONFIG_PARAM}
        return f"{self.stage}-{expected_key(self.stage, cfg, upstream)}"


def storage_root(cfg: PipelineConfig) -> str:
    return cfg.run.output_dir.rstrip("/")



def result_storage(cfg: PipelineConfig) -> str | Path:
    """Where task results and cache records live.

    Default: next to the outputs they describe (deleting the outputs forgets the cache).
    ``run.result_storage`` names a saved Prefect storage block instead (for example a
    ``remote-file-system/shared`` block on an fsspec URL), so that workers on different
    machines reuse each other's stage results.
    """
    if cfg.run.result_storage:
        return cfg.run.result_storage
    return Path(storage_root(cfg), RESULTS_SUBDIR).resolve()


def stage_policy(stage: str, cfg: PipelineConfig) -> StageCachePolicy:
    """A serializable policy: concurrent runs on one key wait for each other instead of racing."""
    locks = Path(storage_root(cfg), LOCKS_SUBDIR)
    return StageCachePolicy(stage=stage).configure(
        isolation_level="SERIALIZABLE",
        lock_manager=FileSystemLockManager(lock_files_directory=locks.resolve()),
    )


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors a retry can fix; bad config, bad input or a missing model fail at once."""
    try:
        state.result(raise_on_failure=True)
    except DETERMINISTIC_ERRORS:
        return False
    except BaseException:  # noqa: BLE001 - anything else may be transient (I/O, network, preemption)
        return True
    return False
