"""BASELINE and EVALUATE stages: base vs tuned on held-out loss, prompt benchmarks and generation behaviour.

The base model (not quantised) is measured by the baseline stage (``base_eval.json``);
the evaluate stage attaches and merges the train stage's LoRA adapter and measures
the tuned model on exactly the same inputs (same prompts, same decoding; checked by
digest). Per-item results of both models are kept, every metric gets a paired
bootstrap 95 % interval on its delta and a verdict, and the gate reads those
intervals (``sft_pipeline.evaluate.entry`` writes results, plots and the report).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sft_pipeline import constants
from sft_pipeline.artifacts import json_digest
from sft_pipeline.config import EvalConfig
from sft_pipeline.errors import VerificationError
from sft_pipeline.evaluate.behaviour import behaviour_items, response_record
from sft_pipeline.evaluate.benchmarks import BENCHMARKS, Benchmark
from sft_pipeline.evaluate.generate import generate
from sft_pipeline.evaluate.ifeval import mean, per_instruction
from sft_pipeline.evaluate.loss import heldout_loss, read_heldout
from sft_pipeline.evaluate.metrics import HELDOUT_LOSS, bench_items, compare, metric_table
from sft_pipeline.evaluate.prompts import load_questions
from sft_pipeline.files import write_json
from sft_pipeline.resources import resolve_path
from sft_pipeline.verdicts import BETTER, NOT_PROMOTED, WORSE

log = logging.getLogger(__name__)

BASE, TUNED = "base", "tuned"
MOSTLY_CUT = 0.5  # above this share of answers cut by max_new_tokens, a benchmark scores truncation
QUESTIONS = "questions"  # the MT-Bench answers, in the cut-share table
BASE_SECONDS_FILE = "base_seconds.json"  # beside constants.BASELINE_FILE: the base evaluation's phase timings
HELDOUT_SCALARS = ("heldout_loss", "heldout_perplexity", "heldout_tokens", "heldout_rows")
# Metrics compared base vs tuned, in report order (one block of four per benchmark).
METRIC_TABLE = metric_table([(b.name, b.title) for b in BENCHMARKS])
METRICS = tuple(m.name for m in METRIC_TABLE)


@dataclass
class Inputs:
    heldout: list[dict]
    prompts: dict[str, list[dict]]  # benchmark name -> its prompt rows
    questions: list[dict]


@dataclass
class ModelEval:
    metrics: dict
    verdicts: dict[str, list[dict]] = field(default_factory=dict)  # benchmark -> per-prompt verdicts
    responses: dict[str, list[dict]] = field(default_factory=dict)  # benchmark -> per-prompt response records
    question_responses: list[dict] = field(default_factory=list)  # MT-Bench response records
    items: dict[str, tuple[list, list]] = field(default_factory=dict)  # metric -> (values, weights)
    seconds: dict = field(default_factory=dict)  # per phase


def load_inputs(stage_dirs: dict[str, Path], cfg: EvalConfig) -> Inputs:
    return Inputs(
        heldout=read_heldout(stage_dirs[constants.STAGE_TOKENIZE] / constants.HELDOUT_TOKENS_FILE,
                             cfg.max_heldout_rows),
        prompts={b.name: b.load(resolve_path(getattr(cfg, b.prompts_key)), getattr(cfg, b.limit_key))
                 for b in BENCHMARKS},
        questions=load_questions(resolve_path(cfg.generation_prompts), cfg.num_generation_prompts),
    )


def _benchmarks(inputs: Inputs) -> list[Benchmark]:
    return [b for b in BENCHMARKS if b.name in inputs.prompts]


def _table(benches: list[Benchmark]) -> tuple:
    """The compared metrics for these benchmarks, in report order."""
    return metric_table([(b.name, b.title) for b in benches])


def _score_benchmarks(ev: ModelEval, inputs: Inputs, records: list[dict]) -> list[dict]:
    """Score each benchmark's slice of ``records``; return the records left (the questions')."""
    for bench in _benchmarks(inputs):
        rows = inputs.prompts[bench.name]
        chunk, records = records[:len(rows)], records[len(rows):]
        scores, verdicts = bench.score(rows, [r["text"] for r in chunk])
        ev.metrics.update({f"{bench.name}_{k}": v for k, v in scores.items()})
        ev.verdicts[bench.name], ev.responses[bench.name] = verdicts, chunk
        for suffix in scores:
            ev.items[f"{bench.name}_{suffix}"] = bench_items(verdicts, suffix)
    return records


def evaluate_model(model, tokenizer, inputs: Inputs, cfg: EvalConfig, seed: int) -> ModelEval:
    """Every metric, and its per-item values, for one model on the shared inputs."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    loss = heldout_loss(model, inputs.heldout, batch_size=cfg.batch_size, pad_id=tokenizer.pad_token_id)
    ev = ModelEval({k: loss[k] for k in HELDOUT_SCALARS}, seconds={"heldout_loss": lap()})
    ev.items[HELDOUT_LOSS] = (loss["row_nll"], [float(n) for n in loss["row_tokens"]])
    prompts = [r["prompt"] for b in _benchmarks(inputs) for r in inputs.prompts[b.name]]
    gens = generate(model, tokenizer, prompts + [q["prompt"] for q in inputs.questions],
                    batch_size=cfg.generation_batch_size,
                    max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
                    seed=seed)
    ev.seconds["generation"] = lap()
    records = [{"text": g.text, **response_record(g, ngram=cfg.repetition_ngram, min_words=cfg.min_response_words)}
               for g in gens]
    ev.question_responses = _score_benchmarks(ev, inputs, records)
    ev.seconds["checks"] = lap()
    for metric, values in behaviour_items(records).items():
        ev.metrics[metric] = mean(values)
        ev.items[metric] = (values, [1.0] * len(values))
    return ev


def attach_adapter(model, adapter_dir: Path):
    """Base model + the LoRA adapter (checked: one line if missing, damaged or not finite), merged for speed."""
    from sft_pipeline.models import load_adapter

    return load_adapter(model, adapter_dir).merge_and_unload().eval()


def delta(base: dict, tuned: dict) -> dict:
    """``tuned - base`` per metric (None where either is missing).

    >>> delta({"a": 1.0, "b": None}, {"a": 1.5, "b": 2.0})
    {'a': 0.5, 'b': None}
    """
    return {k: (tuned[k] - base[k] if base.get(k) is not None and tuned.get(k) is not None else None)
            for k in base}


def cut_share(records: list[dict]) -> float | None:
    """The share of answers that hit ``max_new_tokens`` before ending their turn.

    >>> cut_share([{"stopped": True}, {"stopped": False}]), cut_share([])
    (0.5, None)
    """
    return sum(not r["stopped"] for r in records) / len(records) if records else None


def cut_shares(base: ModelEval, tuned: ModelEval) -> dict[str, dict]:
    """Per benchmark (and the MT-Bench questions): the share of each model's answers cut, and their number."""
    groups = {name: (base.responses[name], tuned.responses.get(name, [])) for name in base.responses}
    groups[QUESTIONS] = (base.question_responses, tuned.question_responses)
    return {name: {BASE: cut_share(b), TUNED: cut_share(t), "answers": len(b)} for name, (b, t) in groups.items()}


def flag_cut(compared: dict[str, dict], cuts: dict[str, dict]) -> dict[str, dict]:
    """Mark each benchmark metric with its cut shares, and as mostly cut on a side where most answers were cut."""
    for name, entry in compared.items():
        bench = next((b for b in cuts if b != QUESTIONS and name.startswith(f"{b}_")), None)
        if bench is None:
            continue
        for side in (BASE, TUNED):
            share = cuts[bench][side]
            entry[f"cut_{side}"] = share
            entry[f"mostly_cut_{side}"] = share is not None and share > MOSTLY_CUT
    return compared


def comparison(base: ModelEval, tuned: ModelEval, *, resamples: int, seed: int) -> tuple[dict, dict]:
    """(per-metric comparison with paired intervals and cut shares, per-item values as saved in eval.json)."""
    items = {name: {BASE: values, TUNED: tuned.items[name][0], "weights": weights}
             for name, (values, weights) in base.items.items() if name in tuned.items}
    table = _table([b for b in BENCHMARKS if b.name in base.verdicts])
    compared = compare(table, base.metrics, tuned.metrics, items, resamples=resamples, seed=seed)
    return flag_cut(compared, cut_shares(base, tuned)), items


def _bench_results(bench: Benchmark, rows: list[dict], base: ModelEval, tuned: ModelEval) -> dict:
    name = bench.name
    prompts = [{**row, BASE: {**br, **bv}, TUNED: {**tr, **tv}}
               for row, br, bv, tr, tv in zip(rows, base.responses[name], base.verdicts[name],
                                              tuned.responses[name], tuned.verdicts[name])]
    return {"title": bench.title, "checkers": bench.checkers, "prompts": prompts,
            "per_instruction": {BASE: per_instruction(rows, base.verdicts[name]),
                                TUNED: per_instruction(rows, tuned.verdicts[name])}}


def build_results(inputs: Inputs, base: ModelEval, tuned: ModelEval, gate: dict, extra: dict,
                  compared: tuple[dict, dict] = ({}, {})) -> dict:
    """Everything eval.json keeps: point metrics, intervals, gate, per-item records, side-by-side answers."""
    benches = _benchmarks(inputs)
    names = [m.name for m in _table(benches)]
    ordered = {name: {m: ev.metrics.get(m) for m in names} for name, ev in ((BASE, base), (TUNED, tuned))}
    return {
        "metrics": {**ordered, "delta": delta(ordered[BASE], ordered[TUNED])},
        "comparison": [{"metric": name, **entry} for name, entry in compared[0].items()],  # in report order
        "gate": gate,
        "heldout": {"rows": base.metrics["heldout_rows"], "tokens": base.metrics["heldout_tokens"]},
        "cut": cut_shares(base, tuned),
        "benchmarks": [b.name for b in benches],
        **{b.name: _bench_results(b, inputs.prompts[b.name], base, tuned) for b in benches},
        "generations": [{**q, BASE: b, TUNED: t}
                        for q, b, t in zip(inputs.questions, base.question_responses, tuned.question_responses)],
        "items": compared[1],
        "seconds": {BASE: base.seconds, TUNED: tuned.seconds},
        **extra,
    }


def _numbers(results: dict) -> dict:
    """Key metrics (base, tuned, interval of the delta) as plain numbers; None values left out."""
    keys = [HELDOUT_LOSS, "stop_rate"] + [f"{b}_{s}" for b in results["benchmarks"]
                                          for s in ("inst_loose", "prompt_strict")]
    cmp, out = {e["metric"]: e for e in results.get("comparison") or []}, {}
    for key in keys:
        entry = cmp.get(key) or {}
        out.update({f"{key}_{BASE}": results["metrics"][BASE].get(key),
                    f"{key}_{TUNED}": results["metrics"][TUNED].get(key),
                    f"{key}_delta_low": entry.get("low"), f"{key}_delta_high": entry.get("high")})
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def summary(results: dict) -> dict:
    """The stage's counts: numbers, plus ``verdict`` (promoted / not_promoted / inconclusive),
    ``promoted`` (bool) and ``failed_checks`` (the metrics that kept the model from promotion)."""
    gate, verdicts = results["gate"], [e.get("verdict") for e in results.get("comparison") or []]
    blocking = (gate["failed_checks"] if gate["verdict"] == NOT_PROMOTED else gate.get("inconclusive_checks", [])) + \
        gate.get("unmeasured_checks", [])
    counts = {"heldout_rows": results["heldout"]["rows"], "heldout_tokens": results["heldout"]["tokens"],
              **{f"{b}_prompts": len(results[b]["prompts"]) for b in results["benchmarks"]},
              "generation_prompts": len(results["generations"]),
              "metrics_better": verdicts.count(BETTER), "metrics_worse": verdicts.count(WORSE)}
    return {**_numbers(results), **counts, "verdict": gate["verdict"], "promoted": gate["promoted"],
            "failed_checks": list(blocking)}


def measure(model, tokenizer, inputs: Inputs, cfg: EvalConfig, seed: int, which: str, note: str = "") -> ModelEval:
    log.info("evaluating %s model%s: %d held-out rows, %s prompts, %d questions", which, note, len(inputs.heldout),
             {k: len(v) for k, v in inputs.prompts.items()}, len(inputs.questions))
    return evaluate_model(model, tokenizer, inputs, cfg, seed)


def compute_of(model) -> dict:
    """Where and in which number format a model runs (a bf16 GPU and an fp32 CPU give different losses)."""
    param = next(model.parameters())
    return {"device": param.device.type, "dtype": str(param.dtype).removeprefix("torch.")}


def save_base(path: Path, base: ModelEval, inputs: Inputs, compute: dict) -> None:
    """The base model's evaluation, with the digest of the inputs it answered and how it ran; its timings in a file
    beside it (evaluate's key reads this file: identical runs must give identical bytes)."""
    data = asdict(base)
    write_json(path.with_name(BASE_SECONDS_FILE), data.pop("seconds"))
    write_json(path, {"inputs_digest": json_digest(asdict(inputs)), "compute": compute, **data})


def load_base(path: Path, inputs: Inputs, compute: dict) -> ModelEval | None:
    """The base model's evaluation, if it answered exactly ``inputs`` (else one VerificationError line); None if it
    ran on another device or number format than ``compute`` (the pair would not compare like with like)."""
    path = Path(path)
    data = json.loads(path.read_text())
    if data.pop("inputs_digest", None) != json_digest(asdict(inputs)):
        raise VerificationError(f"{path}: the base model was measured on other held-out rows or prompts")
    measured = data.pop("compute", None)
    if measured != compute:
        log.warning("the baseline in %s ran on %s, this evaluation on %s: measuring the base model here",
                    path.parent, measured, compute)
        return None
    seconds = path.with_name(BASE_SECONDS_FILE)
    return ModelEval(**data, seconds=json.loads(seconds.read_text()) if seconds.is_file() else {})
