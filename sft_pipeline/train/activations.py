"""The activations autograd saves for the backward pass of one decoder layer, per token.

A Llama/Gemma/Qwen-style layer (norms, attention with RoPE, a gated MLP, LoRA on its linears)
keeps, for each token (``c``: bytes of the compute dtype, ``a``: of the adapters):

* every RMSNorm: its input upcast to fp32 (4 bytes x width); with trainable norm weights (full
  fine-tuning) also the normalised fp32 values;
* attention: the rotated queries, keys and values and the output (``c`` each), the fp32
  log-sum-exp per head; keys and values repeated to every query head where ``sdpa`` gets a dense
  mask (padded or flattened batches: transformers' ``repeat_kv``) or with ``eager``, which also keeps
  the attention probabilities (fp32 and ``c``, heads x row length);
* the MLP: gate, up and activation outputs (``c`` x intermediate each);
* trainable linears (full): their inputs (the norm outputs and the gated product);
* each LoRA target: with dropout, the mask (1 byte on CUDA, ``a`` elsewhere, where dropout
  multiplies by a noise tensor) and the dropped-out input (``a``); without dropout, the input
  cast to the adapter dtype, or the input itself (shared by the targets that read it); and the
  ``lora_A`` output (``a`` x rank).

Frozen linears (also bitsandbytes' 4-bit ones) keep nothing of their input. On the CPU these
rules give exactly what ``torch.autograd.graph.saved_tensors_hooks`` sees (tests/test_train_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

FP32 = 4
CUDA_MASK_BYTES = 1  # torch.native_dropout's bool mask
FIRST_LAYER_SUFFIX = "layers.0"
NORM_CLASS_MARK = "Norm"
ATTN_EAGER, ATTN_SDPA = "eager", "sdpa"
# Which tensor a LoRA target reads, by the usual module names: targets reading one tensor share it.
LORA_INPUT_SOURCE = {"q_proj": "attention input", "k_proj": "attention input", "v_proj": "attention input",
                     "o_proj": "attention output", "gate_proj": "mlp input", "up_proj": "mlp input",
                     "down_proj": "mlp product"}


def matches_target(module_name: str, targets) -> bool:
    """PEFT's rule for a list of target names: the module's name is one, or ends with ``.`` and one.

    >>> matches_target("model.layers.0.self_attn.q_proj", ["q_proj"]), matches_target("lm_head", ["q_proj"])
    (True, False)
    """
    return any(module_name == t or module_name.endswith(f".{t}") for t in targets)


@dataclass(frozen=True)
class Architecture:
    """The sizes that set a decoder's activation memory."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    norm_widths: tuple[int, ...] = ()  # values normalised per token by each norm of one layer
    lora_inputs: tuple[tuple[str, int], ...] = ()  # (name, in_features) of each LoRA target of one layer
    linear_parameters: int = 0  # weights of all linear layers (autocast copies them to bf16)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def of(cls, model, lora_targets=()) -> "Architecture":
        """Read from a (meta-device) model: its config's sizes, and its first decoder layer's norms and targets."""
        from torch import nn

        cfg = model.config.get_text_config()
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        first = next(m for name, m in model.named_modules() if name.endswith(FIRST_LAYER_SUFFIX))
        norms, targets = [], []
        for name, module in first.named_modules():
            weight = getattr(module, "weight", None)
            if NORM_CLASS_MARK in type(module).__name__ and weight is not None:
                per_head = weight.numel() == head_dim and weight.numel() != cfg.hidden_size
                norms.append(weight.numel() * ((kv_heads if name.endswith("k_norm") else heads) if per_head else 1))
            if isinstance(module, nn.Linear) and lora_targets and matches_target(name, lora_targets):
                targets.append((name.rsplit(".", 1)[-1], module.in_features))
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        return cls(hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, layers=cfg.num_hidden_layers,
                   heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=cfg.vocab_size,
                   norm_widths=tuple(norms), lora_inputs=tuple(targets), linear_parameters=linear)


@dataclass(frozen=True)
class Workload:
    """One micro-batch as the estimate sees it."""

    micro_batch: int
    row_tokens: int  # tokens of the longest row (padded rows are that long; packed rows are at most that)
    supervised_fraction: float = 1.0  # of the tokens, those with a label
    checkpointing: bool = False
    cuda: bool = False
    attention: str = ATTN_SDPA
    dense_mask: bool = True  # sdpa/eager get a mask: padded micro-batches, or flattened ones


def repeats_kv(arch: Architecture, work: Workload) -> bool:
    """Whether keys and values are expanded to every query head before attention (grouped-query models).

    >>> a = Architecture(64, 128, 2, heads=4, kv_heads=2, head_dim=16, vocab=100)
    >>> repeats_kv(a, Workload(2, 16)), repeats_kv(a, Workload(2, 16, dense_mask=False))
    (True, False)
    >>> repeats_kv(a, Workload(2, 16, attention="flex_attention"))
    False
    """
    if arch.heads == arch.kv_heads:
        return False
    return work.attention == ATTN_EAGER or (work.attention == ATTN_SDPA and work.dense_mask)


def layer_bytes_per_token(arch: Architecture, work: Workload, *, compute_bytes: int, trainable_base: bool,
                          lora=None, adapter_bytes: int = FP32) -> int:
    """Bytes one decoder layer saves for backward per token (see the module docstring)."""
    c, a = compute_bytes, adapter_bytes
    kv = arch.q_dim if repeats_kv(arch, work) else arch.kv_dim
    saved = {"query": c * arch.q_dim, "key": c * kv, "value": c * kv, "attention output": c * arch.q_dim,
             "logsumexp": FP32 * arch.heads, "gate": c * arch.intermediate, "up": c * arch.intermediate,
             "activation": c * arch.intermediate}
    for n, width in enumerate(arch.norm_widths):
        saved[f"norm {n} input"] = FP32 * width
        if trainable_base:
            saved[f"norm {n} normalised"] = FP32 * width
    if work.attention == ATTN_EAGER:
        saved["attention probabilities"] = (FP32 + c) * arch.heads * work.row_tokens
    if trainable_base:
        saved.update({"attention input": c * arch.hidden, "mlp input": c * arch.hidden,
                      "mlp product": c * arch.intermediate})
    for name, d_in in arch.lora_inputs if lora is not None else ():
        if lora.dropout > 0:
            saved[f"{name} dropout mask"] = (CUDA_MASK_BYTES if work.cuda else a) * d_in
            saved[f"{name} dropout output"] = a * d_in
        elif a != c:
            saved[f"{name} input cast"] = a * d_in
        else:
            saved.setdefault(LORA_INPUT_SOURCE.get(name, name), c * d_in)
        saved[f"{name} lora_A output"] = a * lora.r
    return sum(saved.values())
