"""The baseline stage's entry (sft_pipeline.stages): the base model measured once on the held-out rows and prompts.

It imports no report code, so a change to the report re-runs evaluate only, not this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sft_pipeline import constants
from sft_pipeline.evaluate.model_eval import BASE, compute_of, load_inputs, measure, save_base

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun


def run_stage(run: StageRun) -> dict:
    from sft_pipeline.models import load_causal_lm, load_tokenizer

    inputs = load_inputs(dict(run.inputs), run.cfg.eval)
    model = load_causal_lm(run.cfg.model).eval()
    base = measure(model, load_tokenizer(run.cfg.model), inputs, run.cfg.eval, run.cfg.run.seed, BASE)
    save_base(run.out / constants.BASELINE_FILE, base, inputs, compute_of(model))
    return dict(base.metrics)
