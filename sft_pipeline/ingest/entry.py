"""The ingest stage's entry (sft_pipeline.stages): every configured source into the stage's folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sft_pipeline.ingest.sources import ingest_sources

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun


def run_stage(run: StageRun) -> dict:
    return ingest_sources(run.cfg.ingest, run.out)
