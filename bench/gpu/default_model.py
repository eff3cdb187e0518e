"""The default model's shape through the train stage on the GPU, then timed batched greedy generation.

The default model is Gemma 3 270M (``Gemma3ForCausalLM``: hidden 640, 18 layers, vocabulary
262,144, tied embeddings). Its weights do not fit the device run's 64 MiB carry, so this builds its
architecture with random weights (``random_model.py gemma3-270m``) and its real tokenizer (carried
gzipped in ``.whl/assets/gemma3``; SmolLM2's where it was not found): throughput and memory are the
real model's, the losses are not. ``--model`` names real weights (a GGUF file or a model folder).

1. Train with the train stage's defaults (QLoRA, micro-batch 4 x accumulation 4, bf16) for
   ``--steps`` optimizer steps on carried ShareGPT conversations, through
   ``sft_pipeline.train.trainer.train_model``; tokens/s over windows of ``--window-steps`` steps
   after ``--warmup-steps``, and the estimated peak memory beside the measured one.
2. Time ``sft_pipeline.evaluate.generate.generate`` (what the evaluate stage runs) on the IFEval
   prompts, cycled to ``--prompts``, for the base model and the base with the adapter attached, one
   window per batch of ``--generation-batch`` prompts.

    python bench/gpu/default_model.py --assets .whl/assets --out OUT.json [--model PATH] [--steps 9]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(Path(__file__).resolve().parent)]

from windows import spread, window_rates  # noqa: E402

IFEVAL_PROMPTS = REPO / "sft_pipeline" / "data" / "ifeval_prompts.jsonl"
SHAPE = "gemma3-270m"
GEMMA3_TEMPLATES = ("gemma3", "gemma3_training")  # TRL's chat templates: generation, and labels


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def tokenizer_folder(assets: Path, work: Path) -> tuple[Path, bool]:
    """(the default model's tokenizer, unpacked into ``work``; True) or (SmolLM2's carried one; False)."""
    from random_model import GEMMA3_ASSETS

    carried = assets / GEMMA3_ASSETS
    packed = carried / "tokenizer.json.gz"
    if not packed.is_file():
        return assets / "tokenizer", False
    out = work / "gemma3-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(packed, "rb") as src, open(out / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(carried / "tokenizer_config.json", out / "tokenizer_config.json")
    return out, True


def model_folder(args, work: Path) -> tuple[str, str, str | None]:
    """(model path, what it is, the training template for labels or None for the default ChatML one)."""
    from random_model import write_random_model

    if args.model:
        from sft_pipeline.config import ModelConfig
        from sft_pipeline.models import resolve_model

        return resolve_model(ModelConfig(name_or_path=args.model)), f"real weights ({Path(args.model).name})", None
    tokenizer, gemma = tokenizer_folder(args.assets, work)
    chat, training = (trl_template(t) for t in GEMMA3_TEMPLATES) if gemma else (None, None)
    path = write_random_model(SHAPE, work / "gemma3-random", tokenizer, assets=args.assets, chat_template=chat)
    return str(path), ("Gemma 3 270M architecture, random weights, " + ("its tokenizer" if gemma else
                       "SmolLM2's tokenizer (Gemma's was not carried)")), training


def tokenized_rows(model: str, assets: Path, work: Path, rows: int, max_length: int, template: str | None) -> Path:
    from transformers import AutoTokenizer

    from sft_pipeline import constants
    from sft_pipeline.train.samples import labelled_rows, write_rows

    with gzip.open(assets / "conversations.jsonl.gz", "rt") as fh:
        convs = [json.loads(line) for _, line in zip(range(rows), fh)]
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = labelled_rows(tokenizer, convs, max_length, **({"template": template} if template else {}))
    write_rows(rows, work / "tokenized" / constants.TRAIN_TOKENS_FILE)
    return work / "tokenized"


def train(model: str, tokenized: Path, out: Path, args) -> dict:
    from random_model import flops_per_token, model_config
    from train_sides import step_clock

    from sft_pipeline.config import ModelConfig, TrainConfig
    from sft_pipeline.train import TrainJob
    from sft_pipeline.train.trainer import train_model

    started, clock = time.perf_counter(), step_clock()
    cfg = TrainConfig(method=args.method, max_steps=args.steps, save_steps=args.steps, learning_rate=2e-4)
    train_model(TrainJob(ModelConfig(name_or_path=model), cfg, tokenized, out, seed=0), callbacks=[clock])
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("method", "device", "steps", "micro_batch", "gradient_accumulation", "attempts", "non_pad_tokens",
            "train_runtime_s", "tokens_per_s", "peak_memory_bytes", "peak_memory_kind", "memory_estimate")
    losses = [h["loss"] for h in metrics["loss"]]
    windows = spread(window_rates(clock.marks, args.warmup_steps, args.window_steps))
    context = metrics["data"]["tokens"] / metrics["data"]["rows"]
    mfu = (windows["median"] * flops_per_token(model_config(SHAPE, args.assets), context) / metrics["peak_flops"]
           if windows["median"] and metrics.get("peak_flops") and not args.model else None)
    return {**{k: metrics.get(k) for k in keep}, "windows": windows, "mfu": mfu,
            "wall_s": round(time.perf_counter() - started, 1), "first_loss": losses[0], "final_loss": losses[-1]}


def time_generation(model_path: str, adapter: Path, args) -> list[dict]:
    import torch

    from sft_pipeline.config import ModelConfig
    from sft_pipeline.evaluate.model_eval import attach_adapter
    from sft_pipeline.evaluate.generate import generate
    from sft_pipeline.models import load_causal_lm, load_tokenizer

    cfg = ModelConfig(name_or_path=model_path)
    ifeval = [json.loads(line)["prompt"] for line in IFEVAL_PROMPTS.read_text().splitlines() if line.strip()]
    prompts = [ifeval[i % len(ifeval)] for i in range(args.prompts)]
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg).eval()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    out, size = [], args.generation_batch
    for which in ("base", "tuned"):
        if which == "tuned":
            model = attach_adapter(model, adapter)
        generate(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=8)  # warm-up
        rates, seconds, new = [], 0.0, 0
        for start in range(0, len(prompts), size):
            sync()
            began = time.perf_counter()
            gens = generate(model, tokenizer, prompts[start:start + size], batch_size=size,
                            max_new_tokens=args.max_new_tokens)
            sync()
            took, made = time.perf_counter() - began, sum(g.new_tokens for g in gens)
            rates.append(made / took)
            seconds, new = seconds + took, new + made
        out.append({"model": which, "batch_size": size, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                    "seconds": round(seconds, 2), "new_tokens": new, "windows": spread(rates)})
    return out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=REPO / ".whl" / "assets")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sft-gpu-default"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="a GGUF file or model folder with the real weights")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--window-steps", type=int, default=2)
    parser.add_argument("--method", default="qlora", help="train.method (the default: qlora)")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--max-length", type=int, default=1024)  # tokenize.max_length's default
    parser.add_argument("--max-new-tokens", type=int, default=128)  # eval.max_new_tokens's default
    parser.add_argument("--generation-batch", type=int, default=32)  # eval.generation_batch_size's default
    parser.add_argument("--prompts", type=int, default=96, help="IFEval prompts, cycled (one window per batch)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, what, template = model_folder(args, args.work)
    result = {"model": what}
    tokenized = tokenized_rows(model, args.assets, args.work, args.rows, args.max_length, template)
    result["train"] = train(model, tokenized, args.work / "train", args)
    args.out.write_text(json.dumps(result, indent=1))  # partial result, in case generation is cut short
    result["generation"] = time_generation(model, args.work / "train" / "adapter", args)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
