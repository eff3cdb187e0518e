"""Loading the model, its tokenizer and chat template, and a trained adapter.

Where the files come from (hub ids, local folders, GGUF files, packages that assemble their
weights, the tiny test model) and the model cache are :mod:`sft_pipeline.model_files`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import torch

from sft_pipeline import model_files
from sft_pipeline.config import ModelConfig
from sft_pipeline.errors import InputError, VerificationError

log = logging.getLogger(__name__)

LOCAL_RANK_ENV = "LOCAL_RANK"  # set by torchrun / accelerate launch
# transformers 5 deprecated `is_gradient_checkpointing`, which PEFT and TRL still read when they
# wrap a model: a FutureWarning on every run that says nothing about the user's job.
GRADIENT_CHECKPOINTING_DEPRECATION = (FutureWarning, r".*is_gradient_checkpointing.*")
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS_GLOB = "*.safetensors"


class NonFiniteError(VerificationError):
    """Training diverged: a loss, gradient norm or saved weight is NaN or infinite (not retried)."""


def resolve_model(cfg: ModelConfig) -> str:
    """A path or hub id that ``from_pretrained`` can load directly (see :mod:`sft_pipeline.model_files`)."""
    return model_files.resolve_model(cfg.name_or_path)


@contextlib.contextmanager
def hub_errors(cfg: ModelConfig, source: str):
    """A hub id that cannot be loaded (unknown, gated, or unreachable with nothing cached) is one InputError line:
    a retry would wait minutes in the hub client's own retries and fail the same way."""
    try:
        yield
    except OSError as exc:
        if Path(source).exists():
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"model {cfg.name_or_path}: cannot be loaded from the hub ({first})") from None


def _template_text(spec: str) -> str:
    path = Path(spec)
    if path.is_file():
        try:
            return path.read_text()
        except UnicodeDecodeError:
            raise InputError(f"chat template {spec}: not a text file (not UTF-8): name a Jinja template") from None
    import trl

    bundled = Path(trl.__file__).parent / "chat_templates" / f"{spec}.jinja"
    if bundled.is_file():
        return bundled.read_text()
    raise InputError(f"chat template {spec!r}: not a file nor a template in trl/chat_templates")


def load_tokenizer(cfg: ModelConfig, source: str | None = None):
    """Tokenizer with a pad token and the configured chat template."""
    from transformers import AutoTokenizer

    source = source or resolve_model(cfg)
    with hub_errors(cfg, source):
        tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision,
                                                  trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:
        tokenizer.chat_template = _template_text(cfg.chat_template)
    if tokenizer.chat_template is None:
        raise InputError(f"model {cfg.name_or_path}: tokenizer has no chat template; set model.chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def compute_dtype() -> torch.dtype:
    """bf16 where the device supports it, fp32 on the CPU."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_causal_lm(cfg: ModelConfig, *, quantize_4bit: bool = False, source: str | None = None,
                   attn_implementation: str | None = None):
    """Load the base model, optionally in NF4 with double quantisation (QLoRA) and a given attention kernel."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = source or resolve_model(cfg)
    dtype = compute_dtype()
    kwargs = {"dtype": dtype, "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
        kwargs["device_map"] = {"": _device()}
    with hub_errors(cfg, source):
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not quantize_4bit:
        model.to(_device())
    return model


def _device() -> str:
    """This process's device: under ``accelerate launch`` each rank owns the GPU of its ``LOCAL_RANK``."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get(LOCAL_RANK_ENV, 0))}"


@contextlib.contextmanager
def ignoring(*warning_specs: tuple[type[Warning], str]):
    """Silence warnings matching ``(category, message regex)`` pairs, and only those."""
    import warnings

    with warnings.catch_warnings():
        for category, pattern in warning_specs:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        yield


def check_finite_tensors(folder: Path) -> int:
    """Raise :class:`NonFiniteError` naming the file and tensor if a saved weight is NaN or infinite.

    Returns the number of tensors checked (all ``*.safetensors`` files in ``folder``).
    """
    from safetensors import safe_open

    checked = 0
    for path in sorted(Path(folder).glob(WEIGHTS_GLOB)):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name)
                bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
                if bad:
                    raise NonFiniteError(f"{path}: tensor {name} holds {bad} non-finite value(s) of {tensor.numel()}")
                checked += 1
    return checked


def _adapter_problem(adapter_dir: Path) -> str | None:
    """What makes ``adapter_dir`` unloadable as a PEFT adapter, read without loading it; None when it looks whole."""
    import json

    from safetensors import SafetensorError, safe_open

    config = adapter_dir / ADAPTER_CONFIG
    if not config.is_file():
        return f"no LoRA adapter ({ADAPTER_CONFIG} missing)"
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{ADAPTER_CONFIG} is not valid JSON ({exc})"
    weights = sorted(adapter_dir.glob(WEIGHTS_GLOB))
    if not weights:
        return "no adapter weights (*.safetensors)"
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_slice(name)[:0]  # reads the header and checks each tensor's byte range
        except (SafetensorError, OSError, ValueError) as exc:
            return f"{path.name} is truncated or corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def load_adapter(model, adapter_dir: str | Path):
    """``model`` with the PEFT (LoRA) adapter in ``adapter_dir`` attached (not merged).

    A missing, truncated or corrupt adapter, or one with NaN/inf weights, is one
    :class:`InputError` / :class:`NonFiniteError` line naming the folder.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    problem = _adapter_problem(adapter_dir)
    if problem:
        raise InputError(f"{adapter_dir}: {problem}")
    check_finite_tensors(adapter_dir)
    try:
        with ignoring(GRADIENT_CHECKPOINTING_DEPRECATION):
            return PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{adapter_dir}: cannot load the adapter ({first})") from exc
