"""EVALUATE stage: base vs tuned on held-out loss, IFEval checks and generation behaviour.

The base model is loaded once (not quantised) and measured; the train stage's LoRA
adapter is then attached and merged into it, and the tuned model is measured on
exactly the same inputs. Results, the gate verdict, plots and the report are
written into the stage's output folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sft_pipeline import constants as C
from sft_pipeline.artifacts import write_json
from sft_pipeline.config import EvalConfig, ModelConfig
from sft_pipeline.errors import InputError
from sft_pipeline.evaluate.behaviour import behaviour_metrics
from sft_pipeline.evaluate.gate import run_gate
from sft_pipeline.evaluate.generate import Generation, generate
from sft_pipeline.evaluate.ifeval import evaluate_ifeval, load_ifeval_prompts, per_instruction
from sft_pipeline.evaluate.loss import heldout_loss, read_heldout
from sft_pipeline.evaluate.prompts import load_questions
from sft_pipeline.resources import resolve_path

log = logging.getLogger(__name__)

BASE, TUNED = "base", "tuned"
IFEVAL_PREFIX = "ifeval_"
# Metrics compared base vs tuned, in report order.
METRICS = (
    "heldout_loss", "heldout_perplexity",
    "ifeval_prompt_strict", "ifeval_inst_strict", "ifeval_prompt_loose", "ifeval_inst_loose",
    "stop_rate", "repetition_rate", "mean_new_tokens", "mean_words", "sycophantic_rate", "too_short_rate",
)


@dataclass
class Inputs:
    heldout: list[dict]
    ifeval: list[dict]
    questions: list[dict]


@dataclass
class ModelEval:
    metrics: dict
    ifeval_verdicts: list[dict] = field(default_factory=list)
    ifeval_generations: list[Generation] = field(default_factory=list)
    question_generations: list[Generation] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)  # per phase


def load_inputs(stage_dirs: dict[str, Path], cfg: EvalConfig) -> Inputs:
    return Inputs(
        heldout=read_heldout(stage_dirs[C.STAGE_TOKENIZE] / C.HELDOUT_TOKENS_FILE, cfg.max_heldout_rows),
        ifeval=load_ifeval_prompts(resolve_path(cfg.ifeval_prompts), cfg.num_ifeval_prompts),
        questions=load_questions(resolve_path(cfg.generation_prompts), cfg.num_generation_prompts),
    )


def evaluate_model(model, tokenizer, inputs: Inputs, cfg: EvalConfig, seed: int) -> ModelEval:
    """Every metric for one model on the shared inputs."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    metrics = heldout_loss(model, inputs.heldout, batch_size=cfg.batch_size, pad_id=tokenizer.pad_token_id)
    seconds = {"heldout_loss": lap()}
    prompts = [row["prompt"] for row in inputs.ifeval] + [q["prompt"] for q in inputs.questions]
    gens = generate(model, tokenizer, prompts, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                    do_sample=cfg.do_sample, temperature=cfg.temperature, seed=seed)
    seconds["generation"] = lap()
    if_gens, q_gens = gens[:len(inputs.ifeval)], gens[len(inputs.ifeval):]
    scores, verdicts = evaluate_ifeval(inputs.ifeval, [g.text for g in if_gens])
    seconds["ifeval_checks"] = lap()
    metrics.update({IFEVAL_PREFIX + k: v for k, v in scores.items()})
    metrics.update(behaviour_metrics(gens, ngram=cfg.repetition_ngram, min_words=cfg.min_response_words))
    return ModelEval(metrics, verdicts, if_gens, q_gens, seconds=seconds)


def attach_adapter(model, adapter_dir: Path):
    """Base model + the LoRA adapter, merged for plain-speed inference."""
    from peft import PeftModel

    from sft_pipeline.models import GRADIENT_CHECKPOINTING_DEPRECATION, ignoring

    if not (adapter_dir / "adapter_config.json").exists():
        raise InputError(f"{adapter_dir}: no LoRA adapter (adapter_config.json missing)")
    with ignoring(GRADIENT_CHECKPOINTING_DEPRECATION):
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()


def delta(base: dict, tuned: dict) -> dict:
    """``tuned - base`` per metric (None where either is missing).

    >>> delta({"a": 1.0, "b": None}, {"a": 1.5, "b": 2.0})
    {'a': 0.5, 'b': None}
    """
    return {k: (tuned[k] - base[k] if base.get(k) is not None and tuned.get(k) is not None else None)
            for k in base}


def _gen(g: Generation) -> dict:
    return {k: v for k, v in asdict(g).items() if k != "prompt"}


def _side_by_side(items: list[dict], base: list[Generation], tuned: list[Generation]) -> list[dict]:
    return [{**item, BASE: _gen(b), TUNED: _gen(t)} for item, b, t in zip(items, base, tuned)]


def build_results(inputs: Inputs, base: ModelEval, tuned: ModelEval, gate: dict, extra: dict) -> dict:
    ordered = {name: {m: ev.metrics.get(m) for m in METRICS} for name, ev in ((BASE, base), (TUNED, tuned))}
    ifeval_rows = [
        {**row, BASE: {**_gen(bg), **bv}, TUNED: {**_gen(tg), **tv}}
        for row, bg, bv, tg, tv in zip(inputs.ifeval, base.ifeval_generations, base.ifeval_verdicts,
                                       tuned.ifeval_generations, tuned.ifeval_verdicts)
    ]
    return {
        "metrics": {**ordered, "delta": delta(ordered[BASE], ordered[TUNED])},
        "gate": gate,
        "heldout": {"rows": base.metrics["heldout_rows"], "tokens": base.metrics["heldout_tokens"]},
        "ifeval": {
            "prompts": ifeval_rows,
            "per_instruction": {BASE: per_instruction(inputs.ifeval, base.ifeval_verdicts),
                                TUNED: per_instruction(inputs.ifeval, tuned.ifeval_verdicts)},
        },
        "generations": _side_by_side(inputs.questions, base.question_generations, tuned.question_generations),
        "seconds": {BASE: base.seconds, TUNED: tuned.seconds},
        **extra,
    }


def summary(results: dict) -> dict:
    """The small dict returned to the stage runner (goes into the manifest's counts)."""
    m = results["metrics"]
    keys = ("heldout_loss", "ifeval_inst_loose", "ifeval_prompt_strict", "stop_rate")
    out = {f"{k}_{name}": m[name][k] for k in keys for name in (BASE, TUNED)}
    return {**out, "promoted": results["gate"]["promoted"], "failed_checks": results["gate"]["failed_checks"],
            "heldout_rows": results["heldout"]["rows"], "ifeval_prompts": len(results["ifeval"]["prompts"]),
            "generation_prompts": len(results["generations"])}


def evaluate_run(model_cfg: ModelConfig, stage_dirs: dict[str, Path], out_dir: Path, cfg: EvalConfig, *,
                 seed: int) -> dict:
    """Measure base and tuned, apply the gate, write results, plots and the report."""
    from sft_pipeline.models import load_causal_lm, load_tokenizer
    from sft_pipeline.report import render_report, write_run_file

    out_dir, stage_dirs = Path(out_dir), {k: Path(v) for k, v in stage_dirs.items()}
    inputs = load_inputs(stage_dirs, cfg)
    adapter_dir = stage_dirs[C.STAGE_TRAIN] / C.ADAPTER_DIR
    tokenizer = load_tokenizer(model_cfg)
    model = load_causal_lm(model_cfg).eval()
    log.info("evaluating base model: %d held-out rows, %d IFEval prompts, %d questions",
             len(inputs.heldout), len(inputs.ifeval), len(inputs.questions))
    base = evaluate_model(model, tokenizer, inputs, cfg, seed)
    model = attach_adapter(model, adapter_dir)
    log.info("evaluating tuned model (adapter %s)", adapter_dir)
    tuned = evaluate_model(model, tokenizer, inputs, cfg, seed)
    gate = run_gate(base.metrics, tuned.metrics, cfg.gate)
    extra = {"model": model_cfg.name_or_path, "seed": seed, "config": cfg.model_dump(mode="json")}
    results = build_results(inputs, base, tuned, gate, extra)
    write_json(out_dir / C.EVAL_RESULTS_FILE, results)
    write_run_file(out_dir, stage_dirs)
    render_report(out_dir)
    return summary(results)
