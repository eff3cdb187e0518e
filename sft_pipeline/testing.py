"""Tiny local models for tests and benchmarks: random weights, a real tokenizer and template."""

from __future__ import annotations

from pathlib import Path

import torch

from sft_pipeline.config import ModelConfig
from sft_pipeline.files import atomic_dir
from sft_pipeline.models import load_tokenizer

DEFAULT_TOKENIZER_SOURCE = ModelConfig().name_or_path
TINY = "tiny"  # "testing:tiny": the 2-layer model below, built once under the cache folder


def named_model(name: str) -> Path:
    """The folder of a test model named by ``testing:NAME``, built on first use."""
    from sft_pipeline.errors import InputError
    from sft_pipeline.resources import cache_root

    if name != TINY:
        raise InputError(f"model testing:{name}: unknown test model (known: testing:{TINY})")
    return make_tiny_model(cache_root() / "models" / "testing-tiny")


def make_tiny_model(out_dir: str | Path, tokenizer_source: str = DEFAULT_TOKENIZER_SOURCE, seed: int = 0) -> Path:
    """Write a 2-layer random-init Llama with the given model's tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = load_tokenizer(ModelConfig(name_or_path=tokenizer_source))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with atomic_dir(out_dir) as tmp:  # a build killed half-way leaves nothing that looks complete
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
