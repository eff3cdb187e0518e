"""Prefect artifacts for people: threshold sweep, mask preview, report, run summary."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sft_pipeline.cache import local_dir
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import (MASK_PREVIEW_FILE, REPORT_MD_FILE, STAGE_EVALUATE, STAGE_FILTER, STAGE_TOKENIZE,
                                    SWEEP_FILE)
from sft_pipeline.stages import KEY_CHARS, StageResult


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def publish_filter(folder: Path) -> None:
    sweep = folder / SWEEP_FILE
    if sweep.exists():
        create_table_artifact(key="threshold-sweep", table=json.loads(sweep.read_text()),
                              description="Rows and tokens kept at each quality threshold")


def publish_tokenize(folder: Path) -> None:
    preview = _read(folder / MASK_PREVIEW_FILE)
    if preview:
        create_markdown_artifact(key="mask-preview", markdown=preview,
                                 description="Token/label tables: supervised spans marked")


def publish_report(folder: Path) -> None:
    report = _read(folder / REPORT_MD_FILE)
    if report:
        create_markdown_artifact(key="sft-report", markdown=report, description="Base vs tuned evaluation")


PUBLISHERS = {STAGE_FILTER: publish_filter, STAGE_TOKENIZE: publish_tokenize, STAGE_EVALUATE: publish_report}


def publish_stage(cfg: PipelineConfig, result: StageResult) -> None:
    """The artifact a person reads after this stage, if it has one."""
    if result.stage in PUBLISHERS:
        PUBLISHERS[result.stage](local_dir(cfg, result))


def publish_summary(results: dict[str, StageResult]) -> None:
    lines = ["| stage | output | key | counts |", "|---|---|---|---|"]
    lines += [f"| {r.stage} | `{r.url or r.out_dir}` | `{r.key[:KEY_CHARS]}` | {r.counts_line()} |"
              for r in results.values()]
    create_markdown_artifact(key="run-summary", markdown="\n".join(lines), description="Stage outputs of this run")
    log = get_run_logger()
    for r in results.values():
        log.info("%-9s %s", r.stage, r.url or r.out_dir)
