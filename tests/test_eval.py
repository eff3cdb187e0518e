"""EVALUATE stage on the tiny model: held-out loss, generation, behaviour, gate and the full stage."""

import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from sft_pipeline import constants
from sft_pipeline.config import EvalConfig, GateConfig, ModelConfig
from sft_pipeline.errors import InputError

CONVERSATIONS = [
    ("What is two plus two?", "Two plus two is four."),
    ("Name a colour.", "Blue is a colour that many people like."),
    ("Say hello in French.", "Bonjour!"),
    ("Give me a fruit.", "An apple is a crunchy fruit that grows on trees."),
    ("Count to three.", "One, two, three."),
]


def tokenize_conversation(tokenizer, user: str, reply: str) -> dict:
    """Chat-template tokens; labels keep only the assistant reply (and its end-of-turn)."""
    messages = [{"role": constants.ROLE_USER, "content": user}, {"role": constants.ROLE_ASSISTANT, "content": reply}]
    prefix = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[:len(prefix_ids)] == prefix_ids
    labels = [constants.IGNORE_INDEX] * len(prefix_ids) + ids[len(prefix_ids):]
    return {"messages": messages, "input_ids": ids, "labels": labels}


def write_heldout(path: Path, tokenizer) -> list[dict]:
    rows = [{"id": f"c{i}", **tokenize_conversation(tokenizer, u, r)} for i, (u, r) in enumerate(CONVERSATIONS)]
    pd.DataFrame(rows).to_parquet(path)
    return rows


def save_random_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter with non-zero random weights, so the tuned model differs from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out)
    return out


def write_manifest(stage_dir: Path, stage: str, counts: dict, config: dict | None = None) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"stage": stage, "key": "k" * 64, "counts": counts, "config": config or {}, "duration_s": 0.1}
    (stage_dir / constants.MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> dict[str, Path]:
    """Hand-made upstream stage folders, as the other stages would leave them."""
    root = tmp_path_factory.mktemp("stages")
    dirs = {s: root / s for s in (constants.STAGE_INGEST, constants.STAGE_SCORE, constants.STAGE_FILTER,
                                  constants.STAGE_TOKENIZE, constants.STAGE_TRAIN)}
    write_manifest(dirs["ingest"], "ingest", {"rows": 12, "rejected": 2})
    write_manifest(dirs["score"], "score", {"rows": 10, "flags": {"too_short": 3}})
    write_manifest(dirs["filter"], "filter", {"kept": 7, "dropped": 3}, {"threshold": 0.7})
    (dirs["filter"] / constants.SWEEP_FILE).write_text(json.dumps(
        [{"threshold": t, "rows": r, "tokens": r * 40} for t, r in ((0.5, 9), (0.7, 7), (0.9, 2))]))
    write_manifest(dirs["tokenize"], "tokenize", {"train_rows": 2, "heldout_rows": 5})
    write_heldout(dirs["tokenize"] / constants.HELDOUT_TOKENS_FILE, tiny_tokenizer)
    write_manifest(dirs["train"], "train", {"steps": 3, "final_loss": 9.5})
    (dirs["train"] / constants.METRICS_FILE).write_text(json.dumps(
        {"log_history": [{"step": s, "loss": 11.0 - s} for s in (1, 2, 3)], "train_runtime": 1.5}))
    save_random_adapter(tiny_model_dir, dirs["train"] / constants.ADAPTER_DIR)
    return dirs


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from sft_pipeline.models import load_causal_lm

    return load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir))).eval()


def manual_loss(model, rows) -> float:
    """Per row, per position: -log p(label) on supervised positions only, token-weighted."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            logp = torch.log_softmax(model(torch.tensor([row["input_ids"]])).logits[0].float(), -1)
            for pos in range(1, len(row["input_ids"])):
                if row["labels"][pos] != constants.IGNORE_INDEX:
                    total -= float(logp[pos - 1, row["labels"][pos]])
                    count += 1
    return total / count


def test_heldout_loss_matches_manual_computation(tiny_model, tiny_tokenizer, stage_dirs):
    from sft_pipeline.evaluate.loss import heldout_loss, read_heldout

    rows = read_heldout(stage_dirs["tokenize"] / constants.HELDOUT_TOKENS_FILE)
    expected = manual_loss(tiny_model, rows)
    supervised = sum(sum(1 for x in r["labels"][1:] if x != constants.IGNORE_INDEX) for r in rows)
    for batch_size in (1, 2, 8):
        got = heldout_loss(tiny_model, rows, batch_size=batch_size, pad_id=tiny_tokenizer.pad_token_id)
        assert got["heldout_loss"] == pytest.approx(expected, rel=1e-4)
        assert got["heldout_perplexity"] == pytest.approx(math.exp(expected), rel=1e-3)
        assert got["heldout_tokens"] == supervised
    # Loss on all tokens differs: the prompt tokens really are excluded.
    all_tokens = [{**r, "labels": r["input_ids"]} for r in rows]
    assert manual_loss(tiny_model, all_tokens) != pytest.approx(expected, rel=1e-3)


def test_heldout_limit_and_bad_file(stage_dirs, tmp_path):
    from sft_pipeline.evaluate.loss import read_heldout

    assert len(read_heldout(stage_dirs["tokenize"] / constants.HELDOUT_TOKENS_FILE, limit=2)) == 2
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"id": ["a"], "input_ids": [[1, 2]]}).to_parquet(bad)
    with pytest.raises(InputError, match="bad.parquet: missing column"):
        read_heldout(bad)
    with pytest.raises(InputError, match="not found"):
        read_heldout(tmp_path / "missing.parquet")


def test_generation_is_greedy_batched_and_left_padded(tiny_model, tiny_tokenizer):
    from sft_pipeline.evaluate.generate import generate

    prompts = ["Hi", "Write a very long and detailed story about a dragon and a knight.", "Why?"]
    kwargs = dict(max_new_tokens=6, do_sample=False)
    batched = generate(tiny_model, tiny_tokenizer, prompts, batch_size=3, **kwargs)
    single = generate(tiny_model, tiny_tokenizer, prompts, batch_size=1, **kwargs)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt for g in batched] == prompts
    assert all(1 <= g.new_tokens <= 6 for g in batched)
    assert all(g.stopped == (g.new_tokens < 6) or g.stopped for g in batched)
    assert tiny_tokenizer.padding_side == "right"  # restored
    sampled = [generate(tiny_model, tiny_tokenizer, prompts, batch_size=2, max_new_tokens=6, do_sample=True,
                        temperature=1.0, seed=7) for _ in range(2)]
    assert [g.text for g in sampled[0]] == [g.text for g in sampled[1]]


def test_stop_detection(tiny_tokenizer):
    from sft_pipeline.evaluate.generate import stop_token_ids

    stops = stop_token_ids(tiny_tokenizer)
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    assert tiny_tokenizer.eos_token_id in stops


def test_behaviour_metrics():
    from sft_pipeline.evaluate.behaviour import behaviour_metrics
    from sft_pipeline.evaluate.generate import Generation

    gens = [
        Generation("p", "Sure! Here is a long enough answer for you.", 10, True),
        Generation("p", "Ok.", 2, True),
        Generation("p", "la la la la la la la la", 64, False),
        Generation("p", "Great question! The answer is forty two.", 9, True),
    ]
    m = behaviour_metrics(gens, ngram=2, min_words=5)
    assert m["stop_rate"] == 0.75
    assert m["sycophantic_rate"] == 0.5
    assert m["too_short_rate"] == 0.25
    assert m["mean_new_tokens"] == pytest.approx(85 / 4)
    assert m["repetition_rate"] == pytest.approx((6 / 7) / 4)


def test_gate_promotes_and_blocks():
    from sft_pipeline.evaluate.gate import run_gate

    base = {"heldout_loss": 2.0, "ifeval_inst_loose": 0.40, "ifbench_prompt_strict": 0.3, "stop_rate": 0.9,
            "repetition_rate": 0.1}
    better = {"heldout_loss": 1.8, "ifeval_inst_loose": 0.45, "ifbench_prompt_strict": 0.35, "stop_rate": 0.95,
              "repetition_rate": 0.1}
    worse = {"heldout_loss": 2.2, "ifeval_inst_loose": 0.30, "ifbench_prompt_strict": 0.1, "stop_rate": 0.5,
             "repetition_rate": 0.3}
    gate = GateConfig(max_repetition_increase=0.05)
    ok = run_gate(base, better, gate)
    assert ok["promoted"] and ok["failed_checks"] == []
    assert {c["status"] for c in ok["checks"]} == {"passed"} and len(ok["checks"]) == 5
    bad = run_gate(base, worse, gate)
    assert not bad["promoted"]
    assert bad["failed_checks"] == ["heldout_loss", "ifeval_inst_loose", "ifbench_prompt_strict", "stop_rate",
                                    "repetition_rate"]
    # Tolerances and disabled checks.
    loose = GateConfig(max_heldout_loss_increase=0.5, min_ifeval_delta=None, min_ifbench_delta=None,
                       min_stop_rate_delta=None)
    assert run_gate(base, worse, loose)["promoted"]
    # A primary metric that could not be measured (no held-out rows) never promotes.
    unmeasured = run_gate({**base, "heldout_loss": None}, better, GateConfig())
    assert not unmeasured["promoted"] and unmeasured["checks"][0]["status"] == "unmeasured"


def test_questions_cover_categories():
    from sft_pipeline.evaluate.prompts import load_questions
    from sft_pipeline.resources import resolve_path

    questions = load_questions(resolve_path(EvalConfig().generation_prompts), 8)
    assert len({q["category"] for q in questions}) == 8
    assert len(load_questions(resolve_path(EvalConfig().generation_prompts), 200)) == 80
    assert load_questions("/nonexistent.jsonl", 0) == []


SMALL_EVAL = dict(max_new_tokens=8, batch_size=8, num_generation_prompts=2, num_ifeval_prompts=6, num_ifbench_prompts=4)


def run_eval(tiny_model_dir, stage_dirs, out: Path, gate: GateConfig) -> dict:
    from sft_pipeline.evaluate.entry import evaluate_run

    cfg = EvalConfig(**SMALL_EVAL, gate=gate)
    out.mkdir()
    return evaluate_run(ModelConfig(name_or_path=str(tiny_model_dir)), stage_dirs, out, cfg, seed=0)


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory, tiny_model_dir, stage_dirs):
    """A full evaluation whose gate cannot pass (the stop rate must rise by a whole 1.0). (Not IFEval: the tiny
    model's answers are all cut by max_new_tokens, so its IFEval checks are unmeasured, not failed.)"""
    out = tmp_path_factory.mktemp("eval") / "blocked"
    return out, run_eval(tiny_model_dir, stage_dirs, out, GateConfig(min_stop_rate_delta=1.0))


def test_evaluate_run_writes_results_and_blocks(blocked_run, tiny_model, tiny_tokenizer, stage_dirs):
    out, summary = blocked_run
    for name in (constants.EVAL_RESULTS_FILE, constants.REPORT_MD_FILE, constants.REPORT_HTML_FILE, constants.RUN_FILE,
                 constants.METRIC_DELTAS_FILE, constants.LOSS_CURVE_FILE):
        assert (out / name).exists(), name
    assert summary["promoted"] is False and "stop_rate" in summary["failed_checks"]
    results = json.loads((out / constants.EVAL_RESULTS_FILE).read_text())
    base, tuned = results["metrics"]["base"], results["metrics"]["tuned"]
    # The base numbers are those of the plain base model; the adapter changes the tuned ones.
    from sft_pipeline.evaluate.loss import read_heldout

    rows = read_heldout(stage_dirs["tokenize"] / constants.HELDOUT_TOKENS_FILE)
    assert base["heldout_loss"] == pytest.approx(manual_loss(tiny_model, rows), rel=1e-4)
    assert tuned["heldout_loss"] != pytest.approx(base["heldout_loss"], rel=1e-6)
    assert len(results["ifeval"]["prompts"]) == 6 and len(results["generations"]) == 2
    assert results["metrics"]["delta"]["heldout_loss"] == pytest.approx(tuned["heldout_loss"] - base["heldout_loss"])
    report = (out / constants.REPORT_MD_FILE).read_text()
    assert "NOT promoted" in report and "`ifeval_inst_loose`" in report
    run = json.loads((out / constants.RUN_FILE).read_text())
    assert set(run["stage_dirs"]) == set(stage_dirs) and run["train_loss"][0] == [1, 10.0]


def test_evaluate_run_promotes(tmp_path, tiny_model_dir, stage_dirs):
    # One check the tiny model passes (a gate with none is refused: it would promote anything).
    lenient = GateConfig(max_heldout_loss_increase=None, min_ifeval_delta=None, min_ifbench_delta=None,
                         min_stop_rate_delta=None, max_repetition_increase=1.0, primary_metric=None)
    summary = run_eval(tiny_model_dir, stage_dirs, tmp_path / "ok", lenient)
    assert summary["promoted"] is True and summary["failed_checks"] == []
    assert "Verdict: promoted" in (tmp_path / "ok" / constants.REPORT_MD_FILE).read_text()


def test_missing_adapter_is_a_clear_error(tmp_path, tiny_model_dir, stage_dirs):
    dirs = {**stage_dirs, "train": tmp_path / "empty-train"}
    with pytest.raises(InputError, match="no LoRA adapter"):
        run_eval(tiny_model_dir, dirs, tmp_path / "out", GateConfig())


def test_eval_json_keeps_per_item_results_of_both_models(blocked_run, tiny_model, stage_dirs):
    """Per held-out row: summed NLL and tokens; per prompt: every check and the behaviour of each answer;
    the metrics are exactly the aggregates of those items, and every metric has an interval and verdict."""
    out, _ = blocked_run
    results = json.loads((out / constants.EVAL_RESULTS_FILE).read_text())
    items, metrics = results["items"], results["metrics"]
    loss = items["heldout_loss"]
    assert len(loss["base"]) == len(loss["tuned"]) == len(loss["weights"]) == 5
    for side in ("base", "tuned"):
        assert sum(loss[side]) / sum(loss["weights"]) == pytest.approx(metrics[side]["heldout_loss"], rel=1e-9)
        stops = items["stop_rate"][side]
        assert len(stops) == 6 + 4 + 2 and sum(stops) / len(stops) == pytest.approx(metrics[side]["stop_rate"])
    prompt = results["ifeval"]["prompts"][0]
    for side in ("base", "tuned"):
        record = prompt[side]
        assert {"text", "stopped", "new_tokens", "words", "repetition", "sycophantic", "too_short",
                "prompt_strict", "inst_strict", "prompt_loose", "inst_loose"} <= set(record)
        assert len(record["inst_loose"]) == len(prompt["instruction_id_list"])
    entries = {e["metric"]: e for e in results["comparison"]}
    from sft_pipeline.evaluate.model_eval import METRICS

    assert [e["metric"] for e in results["comparison"]] == list(METRICS)  # a list: report order survives JSON
    for name, entry in entries.items():
        assert entry["low"] <= entry["delta"] + 1e-9 and entry["delta"] <= entry["high"] + 1e-9, name
        expected = {"heldout": 5, "ifeval": 6, "ifbench": 4}.get(name.split("_")[0], 6 + 4 + 2)
        assert entry["n"] == expected, name
    assert entries["heldout_loss"]["verdict"] in ("better", "worse", "no significant change")
    assert entries["mean_words"]["verdict"] is None  # no good direction


def test_summary_is_numbers_plus_verdict(blocked_run):
    _, summary = blocked_run
    assert summary["verdict"] == "not_promoted" and summary["promoted"] is False
    assert summary["failed_checks"][0] == "stop_rate"
    assert set(summary["failed_checks"][1:]) <= {"ifeval_inst_loose", "ifbench_prompt_strict"}  # unmeasured: cut
    others = {k: v for k, v in summary.items() if k not in ("verdict", "failed_checks", "promoted")}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in others.values()), others
    assert summary["heldout_loss_delta_low"] <= summary["heldout_loss_delta_high"]
    assert summary["ifeval_prompts"] == 6 and summary["heldout_rows"] == 5


def test_a_second_benchmark_plugs_in_with_one_entry(monkeypatch, tmp_path, tiny_model_dir, stage_dirs):
    """A benchmark with ifeval's interface added as one entry gets its own prefixed metrics, intervals,
    per-prompt records and report section; both models answer its prompts."""
    import sft_pipeline.evaluate.model_eval as E
    from sft_pipeline.evaluate.benchmarks import Benchmark
    from sft_pipeline.evaluate.ifeval import evaluate_ifeval, load_ifeval_prompts

    extra = Benchmark("ifcopy", "IFCopy", "ifeval_prompts", "num_ifeval_prompts", load_ifeval_prompts,
                      evaluate_ifeval, "a copy of IFEval")
    monkeypatch.setattr(E, "BENCHMARKS", (E.BENCHMARKS[0], extra))  # IFEval and its copy only
    off = GateConfig(max_heldout_loss_increase=None, min_ifeval_delta=None, min_stop_rate_delta=None,
                     primary_metric=None)
    summary = run_eval(tiny_model_dir, stage_dirs, tmp_path / "two", off)
    results = json.loads((tmp_path / "two" / constants.EVAL_RESULTS_FILE).read_text())
    assert results["benchmarks"] == ["ifeval", "ifcopy"] and summary["ifcopy_prompts"] == 6
    entries = {e["metric"]: e for e in results["comparison"]}
    for suffix in ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose"):
        assert entries[f"ifcopy_{suffix}"]["base"] == entries[f"ifeval_{suffix}"]["base"]  # same prompts, decoding
        assert entries[f"ifcopy_{suffix}"]["n"] == 6
    assert len(items := results["items"]["stop_rate"]["base"]) == 6 + 6 + 2, items
    report = (tmp_path / "two" / constants.REPORT_MD_FILE).read_text()
    assert "## Instruction following (IFCopy checks)" in report and "IFCopy instruction loose" in report


def test_the_baseline_stage_gives_the_numbers_measured_in_process(blocked_run, tiny_model_dir, stage_dirs, tmp_path,
                                                                  caplog):
    """The base model measured by the baseline stage (another process in a run) and read back by evaluate gives
    exactly what evaluate measured itself; a baseline of other inputs is refused in one line."""
    from sft_pipeline.config import validate_config
    from sft_pipeline.errors import VerificationError
    from sft_pipeline.baseline import entry as baseline
    from sft_pipeline.stages import StageRun

    cfg = validate_config({"ingest": {"sources": [{"path": "x"}]}, "model": {"name_or_path": str(tiny_model_dir)},
                           "eval": {**SMALL_EVAL, "gate": {"min_stop_rate_delta": 1.0}}, "run": {"seed": 0}})
    (tmp_path / "baseline").mkdir()
    counts = baseline.run_stage(StageRun(cfg, tmp_path / "baseline", {"tokenize": stage_dirs["tokenize"]}, "k"))
    run_eval(tiny_model_dir, {**stage_dirs, "baseline": tmp_path / "baseline"}, tmp_path / "out", cfg.eval.gate)
    in_process = json.loads((blocked_run[0] / constants.EVAL_RESULTS_FILE).read_text())
    read_back = json.loads((tmp_path / "out" / constants.EVAL_RESULTS_FILE).read_text())
    assert counts["heldout_loss"] == read_back["metrics"]["base"]["heldout_loss"]
    for part in ("metrics", "items", "comparison", "gate", "ifeval", "generations"):
        assert read_back[part] == in_process[part], part
    from sft_pipeline.evaluate.entry import evaluate_run

    # Measured on another device or number format (a bf16 GPU): not paired with this fp32 run; measured again here.
    saved = tmp_path / "baseline" / constants.BASELINE_FILE
    saved.write_text(saved.read_text().replace('"device": "cpu"', '"device": "cuda"'))
    assert '"device": "cuda"' in saved.read_text()
    with caplog.at_level(logging.WARNING, logger="sft_pipeline.evaluate"):
        run_eval(tiny_model_dir, {**stage_dirs, "baseline": tmp_path / "baseline"}, tmp_path / "gpu-base",
                 cfg.eval.gate)
    assert any("measuring the base model here" in r.getMessage() for r in caplog.records)
    again = json.loads((tmp_path / "gpu-base" / constants.EVAL_RESULTS_FILE).read_text())
    assert again["metrics"] == in_process["metrics"] and again["items"] == in_process["items"]
    fewer = EvalConfig(**{**SMALL_EVAL, "num_ifeval_prompts": 5})  # other prompts than the baseline answered
    with pytest.raises(VerificationError, match="measured on other held-out rows or prompts"):
        evaluate_run(cfg.model, {**stage_dirs, "baseline": tmp_path / "baseline"}, tmp_path, fewer, seed=0)
