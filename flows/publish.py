"""Prefect artifacts for people: threshold sweep, mask preview, report, run summary."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sft_pipeline import constants as C
from sft_pipeline.config import PipelineConfig
from sft_pipeline.stages import local_dir


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def publish_filter(cfg: PipelineConfig, result: dict) -> None:
    sweep = local_dir(cfg, result) / C.SWEEP_FILE
    if sweep.exists():
        create_table_artifact(key="threshold-sweep", table=json.loads(sweep.read_text()),
                              description="Rows and tokens kept at each quality threshold")


def publish_tokenize(cfg: PipelineConfig, result: dict) -> None:
    preview = _read(local_dir(cfg, result) / C.MASK_PREVIEW_FILE)
    if preview:
        create_markdown_artifact(key="mask-preview", markdown=preview,
                                 description="Token/label tables: supervised spans marked")


def publish_report(cfg: PipelineConfig, result: dict) -> None:
    report = _read(local_dir(cfg, result) / C.REPORT_MD_FILE)
    if report:
        create_markdown_artifact(key="sft-report", markdown=report, description="Base vs tuned evaluation")


def publish_summary(results: dict[str, dict]) -> None:
    rows = [
        {"stage": name, "output": res.get("url") or res["out_dir"], "key": res["key"][:16],
         **{k: v for k, v in res["counts"].items() if isinstance(v, (int, float, str, bool))}}
        for name, res in results.items()
    ]
    lines = ["| stage | output | key |", "|---|---|---|"]
    lines += [f"| {r['stage']} | `{r['output']}` | `{r['key']}` |" for r in rows]
    create_markdown_artifact(key="run-summary", markdown="\n".join(lines), description="Stage outputs of this run")
    log = get_run_logger()
    for r in rows:
        log.info("%-9s %s", r["stage"], r["output"])
