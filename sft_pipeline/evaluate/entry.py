"""The evaluate stage's entry (sft_pipeline.stages): base vs tuned, gate, report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sft_pipeline import constants
from sft_pipeline.config import EvalConfig, ModelConfig
from sft_pipeline.evaluate.model_eval import (BASE, TUNED, attach_adapter, build_results, comparison, compute_of, load_base,
                                   load_inputs, measure, summary)
from sft_pipeline.evaluate.gate import run_gate
from sft_pipeline.files import write_json

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun


def run_stage(run: StageRun) -> dict:
    return evaluate_run(run.cfg.model, dict(run.inputs), run.out, run.cfg.eval, seed=run.cfg.run.seed)


def evaluate_run(model_cfg: ModelConfig, stage_dirs: dict[str, Path], out_dir: Path, cfg: EvalConfig, *,
                 seed: int) -> dict:
    """Measure tuned (and base, when no baseline stage measured it), compare them with paired intervals, gate,
    write results, plots and the report."""
    from sft_pipeline.models import load_causal_lm, load_tokenizer
    from sft_pipeline.report import render_report, write_run_file

    out_dir, stage_dirs = Path(out_dir), {k: Path(v) for k, v in stage_dirs.items()}
    inputs = load_inputs(stage_dirs, cfg)
    adapter_dir = stage_dirs[constants.STAGE_TRAIN] / constants.ADAPTER_DIR
    tokenizer = load_tokenizer(model_cfg)
    model = load_causal_lm(model_cfg).eval()
    baseline = stage_dirs.get(constants.STAGE_BASELINE)
    base = load_base(baseline / constants.BASELINE_FILE, inputs, compute_of(model)) if baseline else None
    base = base or measure(model, tokenizer, inputs, cfg, seed, BASE)
    model = attach_adapter(model, adapter_dir)
    tuned = measure(model, tokenizer, inputs, cfg, seed, TUNED, f" (adapter {adapter_dir})")
    compared = comparison(base, tuned, resamples=cfg.bootstrap_resamples, seed=seed)
    gate = run_gate(base.metrics, tuned.metrics, cfg.gate, compared[0])
    extra = {"model": model_cfg.name_or_path, "seed": seed, "config": cfg.model_dump(mode="json")}
    results = build_results(inputs, base, tuned, gate, extra, compared)
    write_json(out_dir / constants.EVAL_RESULTS_FILE, results)
    write_run_file(out_dir, stage_dirs)
    render_report(out_dir)
    return summary(results)
