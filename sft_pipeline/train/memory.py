"""What a training run holds in memory: its parameters by role, dtype and device, and its estimated peak.

* :func:`audit_parameters`: the parameters of a built (wrapped) model, grouped by role
  (``quantized``: 4-bit packed, frozen; ``frozen``; ``trainable``), dtype and device;
* :func:`plan_model`: the same groups for a model that is not loaded, built on the ``meta``
  device from its config (no memory), with the rules of ``train.method`` applied: what
  ``load_model`` and TRL's ``SFTTrainer`` make of it (NF4 linears but the output embedding,
  adapters in bf16 for QLoRA as TRL casts them, in fp32 for LoRA as PEFT upcasts them, fp32
  everything for full);
* :func:`estimate_peak`: weights + gradients and AdamW state of the trainable parameters +
  the activations autograd saves for one micro-batch (:mod:`~sft_pipeline.train.activations`)
  + TRL's fused LM-head loss, which projects the scored positions through the vocabulary in
  tiles and never holds the full logits (``trl.trainer.utils.add_fused_lm_head``).

The estimate counts tensors, so it is comparable with CUDA's ``max_memory_allocated`` (not with
a CPU process's peak RSS, which also holds Python, the libraries and the data).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from sft_pipeline.train.activations import Architecture, Workload, layer_bytes_per_token, matches_target

QUANTIZED, FROZEN, TRAINABLE = "quantized", "frozen", "trainable"
FOUR_BIT_CLASS = "Params4bit"
NF4_BLOCK = 64  # values per absmax (bitsandbytes' 4-bit blocksize)
NESTED_BLOCK = 256  # absmax values per second-level absmax (double quantisation)
NF4_CODE_VALUES, NESTED_CODE_VALUES = 16, 256  # fp32 code tables of the two levels
ADAM_STATES = 2  # exp_avg and exp_avg_sq, each like its parameter
FUSED_TOKEN_TILE, FUSED_VOCAB_TILE = 4096, 32768  # trl.kernels.chunked_logprob tiles
FUSED_STATS = 7  # fp32 running statistics per scored token
FP32 = 4
ADAPTER_DTYPE = {"qlora": torch.bfloat16, "lora": torch.float32}  # TRL's cast / PEFT's autocast_adapter_dtype


@dataclass(frozen=True)
class ParamGroup:
    """Parameters sharing a role, dtype and device: how many tensors, stored elements and bytes."""

    role: str
    dtype: str
    device: str
    tensors: int
    elements: int
    bytes: int


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _grouped(entries) -> list[ParamGroup]:
    totals: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key, elements, size in entries:
        total = totals[key]
        total[0], total[1], total[2] = total[0] + 1, total[1] + elements, total[2] + size
    return [ParamGroup(*key, *total) for key, total in sorted(totals.items())]


def _quant_state_bytes(param) -> int:
    state = getattr(param, "quant_state", None)
    parts = [getattr(state, "absmax", None), getattr(state, "code", None), getattr(state, "offset", None)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        parts += [nested.absmax, nested.code]
    return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))


def audit_parameters(model) -> list[ParamGroup]:
    """The parameters of a built model, by role, dtype and device (4-bit ones with their quantisation state)."""
    entries = []
    for _, param in model.named_parameters():
        quantized = type(param).__name__ == FOUR_BIT_CLASS
        role = TRAINABLE if param.requires_grad else QUANTIZED if quantized else FROZEN
        size = param.numel() * param.element_size() + (_quant_state_bytes(param) if quantized else 0)
        entries.append(((role, _dtype_name(param.dtype), param.device.type), param.numel(), size))
    return _grouped(entries)


def four_bit_storage(numel: int, storage: torch.dtype) -> tuple[int, int]:
    """(stored elements, bytes with the double-quantised state) of an NF4 weight of ``numel`` values.

    >>> four_bit_storage(4096 * 4096, torch.bfloat16)
    (4194304, 8655940)
    """
    elements = (numel + 1) // (storage.itemsize * 2)
    blocks = -(-numel // NF4_BLOCK)
    state = blocks + FP32 * (-(-blocks // NESTED_BLOCK) + NESTED_CODE_VALUES + NF4_CODE_VALUES + 1)
    return elements, elements * storage.itemsize + state


@dataclass(frozen=True)
class ModelPlan:
    """A model's planned parameters and the architecture the activation estimate needs."""

    parameters: list[ParamGroup]
    architecture: Architecture


def _meta_model(config, dtype: torch.dtype, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)


def plan_model(config, method: str, lora, compute: torch.dtype, device: str, *,
               trust_remote_code: bool = False) -> ModelPlan:
    """What ``train.method`` makes of the model of ``config`` on ``device``, built on the meta device.

    ``lora`` is the ``train.lora`` section (``r``, ``dropout``, ``target_modules``); ignored for full.
    """
    from torch import nn
    from transformers.quantizers.base import get_keys_to_not_convert

    model = _meta_model(config, compute, trust_remote_code)
    adapters = method != "full"
    kept = set(get_keys_to_not_convert(model)) if method == "qlora" else set()
    adapter_dtype = ADAPTER_DTYPE.get(method, torch.float32)
    entries, seen = [], set()
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # a tied weight is one tensor
            seen.add(id(param))
            if not adapters:
                entries.append(_entry(TRAINABLE, torch.float32, device, param.numel()))
            elif method == "qlora" and isinstance(module, nn.Linear) and pname == "weight" and name not in kept:
                elements, size = four_bit_storage(param.numel(), compute)
                entries.append(((QUANTIZED, _dtype_name(compute), device), elements, size))
            else:
                entries.append(_entry(FROZEN, compute, device, param.numel()))
        if adapters and isinstance(module, nn.Linear) and matches_target(name, lora.target_modules):
            entries.append(_entry(TRAINABLE, adapter_dtype, device, lora.r * module.in_features))
            entries.append(_entry(TRAINABLE, adapter_dtype, device, module.out_features * lora.r))
    return ModelPlan(_grouped(entries), Architecture.of(model, lora.target_modules if adapters else ()))


def _entry(role: str, dtype: torch.dtype, device: str, numel: int) -> tuple:
    return (role, _dtype_name(dtype), device), numel, numel * dtype.itemsize


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory of one training step, in bytes, by component."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    tokens: int  # per micro-batch
    gradient_checkpointing: bool

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.loss

    def as_dict(self) -> dict:
        """As recorded in ``metrics.json`` (``memory_estimate``)."""
        return {"peak_bytes": self.peak, "weights_bytes": self.weights, "gradients_bytes": self.gradients,
                "optimizer_bytes": self.optimizer, "activations_bytes": self.activations, "loss_bytes": self.loss,
                "tokens_per_micro_batch": self.tokens, "gradient_checkpointing": self.gradient_checkpointing}

    def summary(self) -> str:
        """One log line: the peak and its parts in GiB."""
        gib, checkpointing = 2**30, "on" if self.gradient_checkpointing else "off"
        return (f"peak {self.peak / gib:.2f} GiB = weights {self.weights / gib:.2f} + gradients and optimizer "
                f"{(self.gradients + self.optimizer) / gib:.2f} + activations {self.activations / gib:.2f} "
                f"({self.tokens} tokens per micro-batch, checkpointing {checkpointing}) + loss {self.loss / gib:.2f}")


def loss_bytes(arch: Architecture, work: Workload, compute_bytes: int, head_trainable: bool) -> int:
    """TRL's fused LM-head loss: the scored hidden states, one logits tile, fp32 statistics and gradient.

    On CUDA only the supervised positions are scored; elsewhere every position is.
    """
    scored = int(work.micro_batch * (work.row_tokens - 1) * (work.supervised_fraction if work.cuda else 1.0))
    tile = min(scored, FUSED_TOKEN_TILE) * min(arch.vocab, FUSED_VOCAB_TILE) * compute_bytes
    hidden = scored * arch.hidden * (compute_bytes + FP32)  # the copy it keeps, and its fp32 gradient
    head_gradient = FP32 * arch.vocab * arch.hidden if head_trainable else 0
    return tile + hidden + FUSED_STATS * FP32 * scored + head_gradient


def estimate_peak(parameters: list[ParamGroup], arch: Architecture, work: Workload, *, method: str,
                  compute: torch.dtype, lora=None) -> Estimate:
    """Peak memory of a training step: see the module docstring for what is counted."""
    compute_bytes = compute.itemsize
    if method == "full" and work.cuda:
        compute_bytes = torch.bfloat16.itemsize  # fp32 weights under bf16 autocast
    trainable = sum(g.bytes for g in parameters if g.role == TRAINABLE)
    adapter = ADAPTER_DTYPE.get(method)
    per_layer = layer_bytes_per_token(arch, work, compute_bytes=compute_bytes, trainable_base=method == "full",
                                      lora=lora if adapter else None,
                                      adapter_bytes=(adapter or compute).itemsize)
    tokens = work.micro_batch * work.row_tokens
    if work.checkpointing:  # each layer keeps its input; one layer's activations live again in its backward
        activations = tokens * (arch.layers * arch.hidden * compute_bytes + per_layer)
    else:
        activations = tokens * arch.layers * per_layer
    activations += tokens * arch.hidden * (FP32 + compute_bytes)  # the final norm
    if method == "full" and work.cuda:
        activations += arch.linear_parameters * compute_bytes  # autocast's bf16 copies of the fp32 weights
    return Estimate(
        weights=sum(g.bytes for g in parameters), gradients=trainable, optimizer=ADAM_STATES * trainable,
        activations=activations, loss=loss_bytes(arch, work, compute_bytes, head_trainable=method == "full"),
        tokens=tokens, gradient_checkpointing=work.checkpointing,
    )
