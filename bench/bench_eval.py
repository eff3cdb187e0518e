"""Evaluation cost on the real default model (SmolLM2-135M-Instruct, CPU).

1. Generation: batched, length-sorted, left-padded ``generate`` (batch 8) vs the
   baseline of one prompt at a time (batch 1), same greedy settings; also checks
   that both give the same text.
2. ``--stage``: the whole EVALUATE stage (base + tuned: held-out loss, IFEval and
   MT-Bench generations, report) on synthetic held-out rows of realistic length and a
   LoRA adapter, at the eval config given by ``--set eval.KEY=VALUE`` (default: the
   ``eval:`` section of deployments/configs/default.yaml), printing time per phase.

    python bench/bench_eval.py                       # ~1-2 min
    python bench/bench_eval.py --stage               # + ~3-4 min
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sft_pipeline import constants  # noqa: E402
from sft_pipeline.config import load_config  # noqa: E402
from sft_pipeline.evaluate.generate import generate  # noqa: E402
from sft_pipeline.evaluate.ifeval import load_ifeval_prompts  # noqa: E402
from sft_pipeline.models import load_causal_lm, load_tokenizer, resolve_model  # noqa: E402
from sft_pipeline.resources import resolve_path  # noqa: E402

DEFAULT_CONFIG = "deployments/configs/default.yaml"


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def bench_generation(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> None:
    results = {}
    for bs in (1, batch_size):
        started = time.perf_counter()
        gens = generate(model, tokenizer, prompts, batch_size=bs, max_new_tokens=max_new_tokens)
        results[bs] = (time.perf_counter() - started, gens)
    base_s, base_gens = results[1]
    print(f"\nGeneration: {len(prompts)} IFEval prompts, max_new_tokens={max_new_tokens}, greedy")
    print(row("method", "seconds", "new tokens", "tokens/s", "speedup", "same text as batch 1"))
    print(row("---", "---", "---", "---", "---", "---"))
    for bs, (secs, gens) in results.items():
        tokens = sum(g.new_tokens for g in gens)
        same = sum(a.text == b.text for a, b in zip(gens, base_gens))
        name = "one prompt at a time (baseline)" if bs == 1 else f"batched x{bs}, left-padded, length-sorted"
        print(row(name, f"{secs:.1f}", tokens, f"{tokens / secs:.1f}", f"{base_s / secs:.2f}x",
                  f"{same}/{len(gens)}"))


def synthetic_heldout(tokenizer, prompts_path: str, rows: int, length: int) -> pd.DataFrame:
    """Chat rows cut to ``length`` tokens; labels keep the assistant part (as the tokenize stage does)."""
    texts = [r["prompt"] for r in load_ifeval_prompts(resolve_path(prompts_path))]
    out = []
    for i in range(rows):
        reply = " ".join(texts[(i + k) % len(texts)] for k in range(1, 40))
        messages = [{"role": constants.ROLE_USER, "content": texts[i % len(texts)]},
                    {"role": constants.ROLE_ASSISTANT, "content": reply}]
        prefix = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        prefix, ids = list(getattr(prefix, "input_ids", prefix)), list(getattr(ids, "input_ids", ids))[:length]
        labels = [constants.IGNORE_INDEX] * len(prefix) + ids[len(prefix):]
        out.append({"id": f"h{i}", "input_ids": ids, "labels": labels[:len(ids)]})
    return pd.DataFrame(out)


def bench_stage(cfg, overrides: list[str], seq_len: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sft_pipeline.evaluate.entry import evaluate_run

    tokenizer = load_tokenizer(cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {s: Path(tmp) / s for s in (constants.STAGE_TOKENIZE, constants.STAGE_TRAIN)}
        for d in dirs.values():
            d.mkdir()
        rows = cfg.eval.max_heldout_rows or 64
        heldout = synthetic_heldout(tokenizer, cfg.eval.ifeval_prompts, rows, seq_len)
        heldout.to_parquet(dirs[constants.STAGE_TOKENIZE] / constants.HELDOUT_TOKENS_FILE)
        base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
        lora = LoraConfig(r=cfg.train.lora.r, lora_alpha=cfg.train.lora.alpha,
                          target_modules=cfg.train.lora.target_modules)
        get_peft_model(base, lora).save_pretrained(dirs[constants.STAGE_TRAIN] / constants.ADAPTER_DIR)
        out = Path(tmp) / "eval"
        out.mkdir()
        started = time.perf_counter()
        summary = evaluate_run(cfg.model, dirs, out, cfg.eval, seed=cfg.run.seed)
        total = time.perf_counter() - started
        seconds = json.loads((out / constants.EVAL_RESULTS_FILE).read_text())["seconds"]
    e = cfg.eval
    print(f"\nEVALUATE stage: {rows} held-out rows x {seq_len} tokens, {summary['ifeval_prompts']} IFEval + "
          f"{summary['generation_prompts']} MT-Bench prompts, max_new_tokens={e.max_new_tokens}, "
          f"batch_size={e.batch_size} (overrides: {' '.join(overrides) or 'none'})")
    print(row("phase", "base s", "tuned s"))
    print(row("---", "---", "---"))
    for phase in seconds["base"]:
        print(row(phase, seconds["base"][phase], seconds["tuned"][phase]))
    measured = sum(seconds["base"].values()) + sum(seconds["tuned"].values())
    print(row("load, adapter merge, gate, report", f"{total - measured:.1f}", ""))
    print(row("**total**", f"**{total:.1f}**", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8, help="prompts in the generation comparison")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--stage", action="store_true", help="also time the whole EVALUATE stage")
    ap.add_argument("--seq-len", type=int, default=512, help="held-out row length (tokens) for --stage")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(DEFAULT_CONFIG, args.overrides)
    print(f"torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.2f}")
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model).eval()
    prompts = [r["prompt"] for r in load_ifeval_prompts(resolve_path(cfg.eval.ifeval_prompts), args.prompts)]
    bench_generation(model, tokenizer, prompts, cfg.eval.batch_size, args.max_new_tokens)
    del model
    if args.stage:
        bench_stage(cfg, args.overrides, args.seq_len)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (2 cores; other work inflates timings)")


if __name__ == "__main__":
    main()
