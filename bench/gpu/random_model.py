"""Randomly initialised models of real shapes, built from a config (no download).

Throughput and memory do not depend on the weights' values, so a Llama-3-8B-shaped model with
random weights stands in for the real one in the train benchmark, and ``gemma3-270m`` for the
default model (Gemma 3 270M) whose weights are not carried: its ``config.json`` comes from the
carried assets (``.whl/assets/gemma3``, copied from the converted checkpoint), else from
:data:`GEMMA3_270M`. ``smollm2`` is the previous default model's architecture.

    python bench/gpu/random_model.py llama3-8b /tmp/llama3-8b --tokenizer .whl/assets/tokenizer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Meta-Llama-3-8B's config.json, the values that set its shape and cost.
LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False, hidden_act="silu",
)
# Gemma 3 270M's config.json (google/gemma-3-270m), the values that set its shape and cost.
GEMMA3_270M = dict(
    hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
    head_dim=256, vocab_size=262144, max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256,
    rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
    layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
)
GEMMA3_ASSETS = "gemma3"  # folder of .whl/assets with the converted checkpoint's config (and tokenizer)
SHAPES = ("llama3-8b", "gemma3-270m", "smollm2")
INIT_STD = 0.02


def model_config(shape: str, assets: Path | None = None):
    """The transformers config of a named shape (``smollm2``, ``gemma3-270m``: from ``assets`` when there)."""
    from transformers import AutoConfig, Gemma3TextConfig, LlamaConfig

    if shape == "llama3-8b":
        return LlamaConfig(**LLAMA3_8B)
    if shape == "gemma3-270m":
        carried = Path(assets or ".") / GEMMA3_ASSETS / "config.json"
        return AutoConfig.from_pretrained(carried.parent) if carried.is_file() else Gemma3TextConfig(**GEMMA3_270M)
    if shape == "smollm2":
        return LlamaConfig.from_pretrained(Path(assets) / "smollm2")
    raise SystemExit(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def flops_per_token(config, context: float) -> float:
    """Training FLOPs per token: 6 x parameters (embeddings excluded, LM head included) plus attention.

    Attention: 12 x layers x query width x context (PaLM, appendix B), with ``context`` the mean length
    of the sequences attended over (a padded row's own length; a packed row's documents, not the row;
    sliding-window layers are counted as full ones).

    >>> round(flops_per_token(model_config("llama3-8b"), 1024) / 1e9, 2)
    46.64
    >>> round(flops_per_token(model_config("gemma3-270m"), 1024) / 1e9, 2)
    1.83
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = d * (2 * q + 2 * kv) + 3 * d * config.intermediate_size
    lm_head = d * config.vocab_size
    return 6 * (layers * per_layer + lm_head) + 12 * layers * q * context


def write_random_model(shape: str, out: Path, tokenizer_dir: Path, *, seed: int = 0, assets: Path | None = None,
                       chat_template: str | None = None) -> Path:
    """Save a random-init bf16 checkpoint of ``shape`` with the given tokenizer (initialised on CUDA if present).

    ``assets``: where the shape's carried config is (default: the tokenizer folder's parent);
    ``chat_template``: set on the saved tokenizer (for one that has none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template:
        tokenizer.chat_template = chat_template
    config = model_config(shape, assets or Path(tokenizer_dir).parent)
    config.initializer_range = INIT_STD
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=SHAPES)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", type=Path, default=Path(".whl/assets/tokenizer"))
    args = parser.parse_args()
    path = write_random_model(args.shape, args.out, args.tokenizer)
    print(json.dumps({"model": str(path), "shape": args.shape}))


if __name__ == "__main__":
    main()
