"""Checks at load of what config values name on this machine: files and folders that must be readable."""

from __future__ import annotations

from pathlib import Path

from sft_pipeline import constants
from sft_pipeline.config.ingest import HUB_SCHEME
from sft_pipeline.config.pipeline import PipelineConfig
from sft_pipeline.errors import ConfigError


def check_named_files(cfg: PipelineConfig, origin: str) -> None:
    """Refuse, in one line, a named file that a run could not read when it gets there."""
    check_source_files(cfg, origin)


def check_source_files(cfg: PipelineConfig, origin: str) -> None:
    """Refuse local sources that are pipes, FIFOs or devices: a run digests each source for its cache
    key before ingest reads it, and a retry reads it again; a stream cannot be read twice."""
    for i, src in enumerate(cfg.ingest.sources):
        if src.path.startswith((HUB_SCHEME, constants.PACKAGE_SCHEME)):  # a hub id, or a file inside a package
            continue
        path = Path(src.path).expanduser()
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise ConfigError(f"{origin}: ingest.sources.{i}.path: {src.path} is not a regular file (a pipe or "
                              "device cannot be read twice); save it to a file, or use `sft-pipeline ingest`")
