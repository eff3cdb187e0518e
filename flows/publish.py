"""Prefect artifacts for people: threshold sweep, mask preview, report, run summary."""

from __future__ import annotations

import json
from typing import Any, Callable

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import server
from sft_pipeline.cache import output_folder
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import (MASK_PREVIEW_FILE, REPORT_MD_FILE, STAGE_EVALUATE, STAGE_FILTER, STAGE_TOKENIZE,
                                    SWEEP_FILE)
from sft_pipeline.errors import first_line
from sft_pipeline.escape import cell
from sft_pipeline.stages import KEY_CHARS, StageResult

MARKDOWN, TABLE = "markdown", "table"
ARTIFACTS = {  # stage -> (its output file, artifact key, kind, description)
    STAGE_FILTER: (SWEEP_FILE, "threshold-sweep", TABLE, "Rows and tokens kept at each quality threshold"),
    STAGE_TOKENIZE: (MASK_PREVIEW_FILE, "mask-preview", MARKDOWN, "Token/label tables: supervised spans marked"),
    STAGE_EVALUATE: (REPORT_MD_FILE, "sft-report", MARKDOWN, "Base vs tuned evaluation"),
}


def best_effort(what: str, create: Callable[[], Any]) -> None:
    """``create()`` an artifact; one that cannot be created (the API is gone) is a warning: the stage's work is
    done and stays. Once the temporary server is known dead, none is tried (each waited a minute in the client's
    retries)."""
    if server.LOST.is_set():
        get_run_logger().warning("no %s artifact: Prefect's temporary server is gone", what)
        return
    try:
        create()
    except Exception as exc:  # noqa: BLE001 - an artifact never fails a run
        get_run_logger().warning("could not create the %s artifact: %s", what, first_line(exc))


def publish_stage(cfg: PipelineConfig, result: StageResult) -> None:
    """The artifact a person reads after this stage, if it has one."""
    if result.stage not in ARTIFACTS:
        return
    name, key, kind, description = ARTIFACTS[result.stage]
    path = output_folder(cfg, result) / name
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        return
    if kind == TABLE:
        best_effort(key, lambda: create_table_artifact(key=key, table=json.loads(text), description=description))
    else:
        best_effort(key, lambda: create_markdown_artifact(key=key, markdown=text, description=description))


def summary_markdown(results: dict[str, StageResult]) -> str:
    """The run-summary table: every cell escaped (an ``output_dir`` is config: a backtick or ``|`` in it must not
    end a code span or split the table, nor leave HTML behind).

    >>> r = StageResult(stage="ingest", key="ab" * 20, out_dir="/runs/`<img src=x onerror=alert(1)>`|x")
    >>> print(summary_markdown({"ingest": r}).splitlines()[-1])
    | ingest | /runs/\\`&lt;img src=x onerror=alert(1)&gt;\\`\\|x | abababababababab |  |
    """
    lines = ["| stage | output | key | counts |", "|---|---|---|---|"]
    lines += [f"| {cell(r.stage)} | {cell(r.url or r.out_dir)} | {cell(r.key[:KEY_CHARS])} | {cell(r.counts_line())} |"
              for r in results.values()]
    return "\n".join(lines)


def publish_summary(results: dict[str, StageResult]) -> None:
    best_effort("run-summary", lambda: create_markdown_artifact(
        key="run-summary", markdown=summary_markdown(results), description="Stage outputs of this run"))
    log = get_run_logger()
    for r in results.values():
        log.info("%-9s %s", r.stage, r.url or r.out_dir)
