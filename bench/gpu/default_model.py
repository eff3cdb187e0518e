"""The default model through the train stage on the GPU, then timed batched greedy generation.

Trains SmolLM2-135M-Instruct with the default train settings (QLoRA, micro-batch 4 x accumulation
4) for ``--steps`` steps on carried ShareGPT conversations, through
``sft_pipeline.train.trainer.train_model``; then times ``sft_pipeline.evaluate.generate.generate`` (what the
evaluate stage runs) on the IFEval prompts, for the base model and the base with the adapter merged,
at several batch sizes. The real weights are used when ``--model`` names a GGUF file or a model
folder; otherwise (they do not fit the device run's 64 MiB carry) the model is SmolLM2's
architecture with random weights and its real tokenizer: throughput and memory are the same, the
losses are not.

    python bench/gpu/default_model.py --assets .whl/assets --out OUT.json [--model PATH] [--steps 30]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

IFEVAL_PROMPTS = REPO / "sft_pipeline" / "data" / "ifeval_prompts.jsonl"
GENERATION_BATCHES = (8, 32)  # the evaluate stage's default batch size, and a larger one


def model_folder(args, work: Path) -> tuple[str, str]:
    """(model path, what it is)."""
    from random_model import write_random_model

    if args.model:
        from sft_pipeline.config import ModelConfig
        from sft_pipeline.models import resolve_model

        return resolve_model(ModelConfig(name_or_path=args.model)), f"real weights ({Path(args.model).name})"
    path = write_random_model("smollm2", work / "smollm2-random", args.assets / "tokenizer")
    return str(path), "SmolLM2-135M architecture, random weights (real ones not carried)"


def tokenized_rows(model: str, assets: Path, work: Path, rows: int, max_length: int) -> Path:
    from transformers import AutoTokenizer

    from sft_pipeline import constants
    from sft_pipeline.train.samples import labelled_rows, write_rows

    with gzip.open(assets / "conversations.jsonl.gz", "rt") as fh:
        convs = [json.loads(line) for _, line in zip(range(rows), fh)]
    tokenizer = AutoTokenizer.from_pretrained(model)
    write_rows(labelled_rows(tokenizer, convs, max_length), work / "tokenized" / constants.TRAIN_TOKENS_FILE)
    return work / "tokenized"


def train(model: str, tokenized: Path, out: Path, steps: int, method: str) -> dict:
    from sft_pipeline.config import ModelConfig, TrainConfig
    from sft_pipeline.train import TrainJob
    from sft_pipeline.train.trainer import train_model

    started = time.perf_counter()
    cfg = TrainConfig(method=method, max_steps=steps, save_steps=max(steps // 2, 1), learning_rate=2e-4)
    train_model(TrainJob(ModelConfig(name_or_path=model), cfg, tokenized, out, seed=0))
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("method", "device", "steps", "micro_batch", "gradient_accumulation", "attempts", "non_pad_tokens",
            "train_runtime_s", "tokens_per_s", "peak_memory_bytes", "mfu")
    losses = [h["loss"] for h in metrics["loss"]]
    return {**{k: metrics[k] for k in keep}, "wall_s": round(time.perf_counter() - started, 1),
            "first_loss": losses[0], "final_loss": losses[-1]}


def time_generation(model_path: str, adapter: Path, max_new_tokens: int) -> list[dict]:
    import torch

    from sft_pipeline.config import ModelConfig
    from sft_pipeline.evaluate.model_eval import attach_adapter
    from sft_pipeline.evaluate.generate import generate
    from sft_pipeline.models import load_causal_lm, load_tokenizer

    cfg = ModelConfig(name_or_path=model_path)
    prompts = [json.loads(line)["prompt"] for line in IFEVAL_PROMPTS.read_text().splitlines() if line.strip()]
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg).eval()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    out = []
    for which in ("base", "tuned"):
        if which == "tuned":
            model = attach_adapter(model, adapter)
        generate(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=8)  # warm-up
        for batch in GENERATION_BATCHES:
            sync()
            started = time.perf_counter()
            gens = generate(model, tokenizer, prompts, batch_size=batch, max_new_tokens=max_new_tokens)
            sync()
            seconds = time.perf_counter() - started
            new = sum(g.new_tokens for g in gens)
            out.append({"model": which, "batch_size": batch, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
                        "seconds": round(seconds, 2), "new_tokens": new, "new_tokens_per_s": round(new / seconds, 1),
                        "stopped": sum(g.stopped for g in gens)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=REPO / ".whl" / "assets")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sft-gpu-default"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="a GGUF file or model folder with the real weights")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--method", default="qlora", help="train.method (the default: qlora)")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--max-length", type=int, default=1024)  # tokenize.max_length's default
    parser.add_argument("--max-new-tokens", type=int, default=128)  # eval.max_new_tokens's default
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, what = model_folder(args, args.work)
    result = {"model": what}
    tokenized = tokenized_rows(model, args.assets, args.work, args.rows, args.max_length)
    result["train"] = train(model, tokenized, args.work / "train", args.steps, args.method)
    args.out.write_text(json.dumps(result, indent=1))  # partial result, in case generation is cut short
    result["generation"] = time_generation(model, args.work / "train" / "adapter", args.max_new_tokens)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
