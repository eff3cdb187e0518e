"""Prefect's side of the cache: a policy that asks the library for the key, result storage, retries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fsspec
from prefect.cache_policies import CachePolicy
from prefect.filesystems import RemoteFileSystem

from sft_pipeline import cache, stages, storage
from sft_pipeline.config import PipelineConfig
from sft_pipeline.errors import DETERMINISTIC_ERRORS
from sft_pipeline.stages import StageResult
from sft_pipeline.urls import is_url
from tasks.locks import StageLockManager

RESULTS_SUBDIR = ".prefect-results"
LOCKS_SUBDIR = ".prefect-locks"
FILE_SCHEME = "file://"


@dataclass
class StageCachePolicy(CachePolicy):
    """Key = the library's stage key (input content + config + code), never a run id or a path."""

    stage: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        cfg = PipelineConfig.model_validate(inputs["cfg"])
        upstream = {k: StageResult.model_validate(v) for k, v in inputs["upstream"].items()}
        return f"{self.stage}-{cache.key(stages.get(self.stage), cfg, upstream)}"


def stage_policy(stage: str, cfg: PipelineConfig) -> StageCachePolicy:
    """A serializable policy: concurrent runs of one key wait for each other (a dead holder's lock is broken)."""
    locks = storage.store_of(cfg.run).folder(LOCKS_SUBDIR)  # per machine (see README for several)
    return StageCachePolicy(stage=stage).configure(
        isolation_level="SERIALIZABLE", lock_manager=StageLockManager(lock_files_directory=locks.resolve()))


def result_storage(cfg: PipelineConfig) -> str | Path:
    """Where task results and cache records live.

    Default: next to the outputs they describe (deleting the outputs forgets the cache).
    ``run.result_storage`` is an fsspec URL (``s3://bucket/sft-results``, ``gs://...``) or
    the slug of a saved Prefect storage block (``remote-file-system/shared``), so that
    workers on different machines reuse each other's stage results.
    """
    value = cfg.run.result_storage
    if value:
        return url_block(value) if is_url(value) else value
    if url := storage.store_of(cfg.run).url(RESULTS_SUBDIR):  # beside the outputs, at their URL
        return url_block(url)
    return Path(cfg.run.output_dir, RESULTS_SUBDIR).resolve()


def url_block(url: str) -> str | Path:
    """Save (idempotently) a ``remote-file-system`` block on ``url``; return its slug.

    Prefect requires result storage to be persisted server-side; the block's name is a
    digest of the URL, so every worker resolving the same URL uses the same block. A
    ``file://`` URL is a local folder (Prefect's RemoteFileSystem refuses it).
    """
    if url.startswith(FILE_SCHEME):
        return Path(fsspec.core.url_to_fs(url)[1]).resolve()
    name = f"sft-results-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    RemoteFileSystem(basepath=url).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def retry_condition(stage: stages.Stage) -> Callable[[Any, Any, Any], bool]:
    """A Prefect ``retry_condition_fn`` for ``stage``: retry when its own transient-error predicate holds
    (training: network, interconnect), else when the error is not deterministic (bad config, bad input or a
    missing file fail at once; anything else, such as I/O or pre-emption, may pass on a retry)."""
    transient = stages.resolve(stage.transient) if stage.transient else not_deterministic

    def condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result(raise_on_failure=True)
        except BaseException as exc:  # noqa: BLE001 - the predicate decides
            return transient(exc)
        return False

    return condition


def not_deterministic(exc: BaseException) -> bool:
    return not isinstance(exc, DETERMINISTIC_ERRORS)
