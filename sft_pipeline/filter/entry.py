"""The filter stage's entry (sft_pipeline.stages): the score stage's rows split into kept and dropped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sft_pipeline import constants
from sft_pipeline.filter.split import filter_scored

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun


def run_stage(run: StageRun) -> dict:
    return filter_scored(run.inputs[constants.STAGE_SCORE] / constants.SCORES_FILE, run.out, run.cfg.filter,
                         seed=run.cfg.run.seed)  # the seed draws random_rows
