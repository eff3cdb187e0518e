"""Speed levers of the train stage: attention implementation, padding-free batches, Liger kernels.

Each lever is a key of ``TrainConfig`` (``train.attn_implementation``, ``train.padding_free``,
``train.liger_kernels``; gradient checkpointing is ``train.gradient_checkpointing``).
:func:`resolve_levers` turns them into what this machine can run:

* on a machine without CUDA, the CUDA-only levers (flash / flex attention, Liger's Triton
  kernels) are ignored with one log line each, so a config written for a GPU worker still
  trains on a CPU one;
* on CUDA, a lever whose package is missing is refused with one :class:`ConfigError` line.

``padding_free: auto`` flattens each micro-batch of unpacked rows into one sequence with
position ids (TRL's position-id path) only where the attention kernel is variable-length
(flash, flex): with ``sdpa``/``eager`` transformers builds a dense block-diagonal mask over
the whole flattened batch, whose attention cost grows with the square of the micro-batch's
total tokens. Rows the tokenize stage packed always train padding-free.

The defaults were measured once on a GPU (2026-11-30, before the QLoRA fp32-upcast fix) and are
unmeasured since; ``bench/gpu/check.sh`` measures them. Gradient checkpointing may also be switched
on per attempt by the memory estimate (:mod:`~sft_pipeline.train.fitting`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass

from sft_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

ATTN_SDPA = "sdpa"
ATTN_EAGER = "eager"
ATTN_FLEX = "flex_attention"
ATTN_FLASH2 = "flash_attention_2"
ATTN_FLASH3 = "flash_attention_3"
ATTENTION_IMPLEMENTATIONS = (ATTN_SDPA, ATTN_EAGER, ATTN_FLEX, ATTN_FLASH2, ATTN_FLASH3)
# Kernels that take a flattened batch as variable-length sequences (no dense T x T mask).
VARLEN_ATTENTION = frozenset({ATTN_FLEX, ATTN_FLASH2, ATTN_FLASH3})
CUDA_ONLY_ATTENTION = VARLEN_ATTENTION
# The import name each attention implementation needs beyond torch.
ATTENTION_MODULES = {ATTN_FLEX: "triton", ATTN_FLASH2: "flash_attn", ATTN_FLASH3: "flash_attn_interface"}

PADDING_FREE_AUTO = "auto"
PADDING_FREE_ON = "on"
PADDING_FREE_OFF = "off"
PADDING_FREE_SETTINGS = (PADDING_FREE_AUTO, PADDING_FREE_ON, PADDING_FREE_OFF)

ACTIVATION_CHECKPOINTING = "activation_checkpointing"
GRADIENT_CHECKPOINTING = "gradient_checkpointing"

LIGER_MODULE = "liger_kernel"
# Liger's layer kernels only: TRL's SFTTrainer already fuses the LM head with the loss (chunked
# log-probabilities, no full logits tensor) and refuses Liger's fused linear cross-entropy.
LIGER_KERNEL_CONFIG = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                       "fused_linear_cross_entropy": False}


@dataclass(frozen=True)
class Levers:
    """The speed settings one training run uses, after :func:`resolve_levers`."""

    attn_implementation: str = ATTN_SDPA
    padding_free: bool = False
    liger_kernels: bool = False
    gradient_checkpointing: bool = False

    def sft_kwargs(self) -> dict:
        """Keyword arguments for ``trl.SFTConfig`` (attention is set when the model is loaded)."""
        kwargs: dict = {"padding_free": self.padding_free}
        if self.liger_kernels:
            kwargs.update(use_liger_kernel=True, liger_kernel_config=dict(LIGER_KERNEL_CONFIG))
        return kwargs

    def as_dict(self) -> dict:
        return asdict(self)


def padding_free_for(setting: str, attn_implementation: str) -> bool:
    """Whether unpacked rows train padding-free for a ``train.padding_free`` setting.

    >>> padding_free_for("auto", "flash_attention_2"), padding_free_for("auto", "sdpa")
    (True, False)
    >>> padding_free_for("on", "sdpa"), padding_free_for("off", "flex_attention")
    (True, False)
    """
    if setting == PADDING_FREE_AUTO:
        return attn_implementation in VARLEN_ATTENTION
    return setting == PADDING_FREE_ON


def has_module(name: str) -> bool:
    """True when ``name`` can be imported here (without importing it).

    >>> has_module("json"), has_module("surely_not_a_module_name")
    (True, False)
    """
    return importlib.util.find_spec(name) is not None


def _attention(requested: str, cuda: bool) -> str:
    if requested in CUDA_ONLY_ATTENTION and not cuda:
        log.info("train.attn_implementation=%s needs CUDA; using %s on this machine", requested, ATTN_SDPA)
        return ATTN_SDPA
    module = ATTENTION_MODULES.get(requested)
    if module and not has_module(module):
        raise ConfigError(f"train.attn_implementation={requested}: the {module} package is not installed")
    return requested


def _liger(requested: bool, cuda: bool) -> bool:
    if not requested:
        return False
    if not cuda:
        log.info("train.liger_kernels=true needs CUDA (Triton kernels); ignored on this machine")
        return False
    if not has_module(LIGER_MODULE):
        raise ConfigError("train.liger_kernels=true: the liger-kernel package is not installed")
    return True


def checkpointing_kwargs(enabled: bool) -> dict:
    """``TrainingArguments``' gradient-checkpointing switch under the installed transformers' name for it.

    ``activation_checkpointing`` in recent transformers 5 (``gradient_checkpointing`` its deprecated
    alias); older ones, such as the GPU image's 5.17, know only ``gradient_checkpointing``.
    """
    from transformers import TrainingArguments

    key = ACTIVATION_CHECKPOINTING if ACTIVATION_CHECKPOINTING in TrainingArguments.__dataclass_fields__ else \
        GRADIENT_CHECKPOINTING
    return {key: enabled}


def resolve_levers(cfg, *, cuda: bool | None = None) -> Levers:
    """The levers ``cfg`` (the train section) asks for, as far as this machine can run them."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    attn = _attention(cfg.attn_implementation, cuda)
    levers = Levers(
        attn_implementation=attn,
        padding_free=padding_free_for(cfg.padding_free, attn),
        liger_kernels=_liger(cfg.liger_kernels, cuda),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    log.info("speed levers: %s", " ".join(f"{k}={v}" for k, v in levers.as_dict().items()))
    return levers
