"""The evaluate stage's entry (sft_pipeline.stages): base vs tuned, gate, report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sft_pipeline.evaluate import evaluate_run

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun


def run_stage(run: StageRun) -> dict:
    return evaluate_run(run.cfg.model, dict(run.inputs), run.out, run.cfg.eval, seed=run.cfg.run.seed)
