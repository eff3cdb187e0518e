"""Next-token log-probabilities at supervised positions only: the LM head where the loss needs it.

A causal LM's head projects every position onto the whole vocabulary; the loss reads only the
positions whose next token is supervised (labels != -100). For a large vocabulary (Gemma 3: 262,144
rows, 63 % of its 268 M parameters) that projection is most of the work, so this module runs the
backbone, keeps the supervised positions, and projects only those (in chunks of
:data:`CHUNK_TOKENS` rows of logits). It serves training on the CPU (TRL's fused head projects
every position there, and three times: forward, recompute, gradient) and the held-out loss.

Trainable token rows (PEFT ``trainable_token_indices`` on a tied embedding) are exact here: the
frozen head gives every column, and the trained rows replace theirs, so their gradient is a few
rows, not a vocabulary-sized matrix. (TRL's fused head reads the frozen base weight and never sees
them.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sft_pipeline.constants import IGNORE_INDEX

CHUNK_TOKENS = 1024  # supervised positions projected at a time (1024 x 262,144 fp32 logits: 1 GiB)
# Head transforms this module applies; a model whose config sets another one takes the full forward instead.
OTHER_LOGIT_TRANSFORMS = ("lm_head_multiplier", "logits_scaling", "output_multiplier")


@dataclass(frozen=True)
class Head:
    """The output projection as weights: the frozen matrix, and the trained rows that replace some of its rows."""

    weight: torch.Tensor
    rows: torch.Tensor | None = None  # (k, hidden) trainable values of rows ``index``
    index: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of ``hidden`` (n, hidden_size) over the vocabulary."""
        z = hidden.float() @ self.weight.detach().float().t()
        if self.rows is not None:
            z = z.index_copy(1, self.index, hidden.float() @ self.rows.float().t())
        if self.bias is not None:
            z = z + self.bias.float()
        z = z * self.scale
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)


def _trainable_rows(layer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The trained rows and their indices of a PEFT TrainableTokens layer (tied to the embedding or not)."""
    layer = getattr(layer, "token_adapter", layer)  # PEFT's wrapper of a tied LM head holds the layer
    deltas = getattr(layer, "trainable_tokens_delta", None)
    if deltas is None:
        return None
    active = [name for name in layer.active_adapters if name in deltas] if not layer.merged else []
    if not active:
        return None
    name = active[0]
    weight = layer.get_base_layer().weight
    return deltas[name], torch.tensor(layer.token_indices[name], device=weight.device)


def head_of(model) -> Head | None:
    """The model's output head as a :class:`Head`; None when its config asks for a transform not applied here."""
    config = model.config.get_text_config()
    if any(getattr(config, name, None) is not None for name in OTHER_LOGIT_TRANSFORMS):
        return None
    layer = model.get_output_embeddings()
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    trained = _trainable_rows(layer)
    rows, index = trained if trained else (None, None)
    return Head(weight=base.weight, rows=rows, index=index, bias=getattr(base, "bias", None),
                scale=getattr(config, "logit_scale", None) or 1.0,
                softcap=getattr(config, "final_logit_softcapping", None))


def supervised(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hidden states whose next label is supervised, those labels, and the mask they came from.

    >>> h = torch.arange(6.).view(1, 3, 2); y = torch.tensor([[-100, 7, -100]])
    >>> kept, targets, mask = supervised(h, y)
    >>> kept.tolist(), targets.tolist(), mask.tolist()
    ([[0.0, 1.0]], [7], [[True, False]])
    """
    targets, states = labels[:, 1:], hidden[:, :-1]
    mask = targets != IGNORE_INDEX
    return states[mask], targets[mask], mask


def token_logprobs(head: Head, hidden: torch.Tensor, targets: torch.Tensor,
                   stats: bool = True) -> tuple[torch.Tensor, ...]:
    """Per position: log p(target), and (``stats``) the distribution's entropy and whether the target is the
    top token (what TRL logs; without ``stats`` both are zeros, saving a pass over the logits)."""
    parts = []
    for start in range(0, len(targets), CHUNK_TOKENS):
        z = head.logits(hidden[start:start + CHUNK_TOKENS])
        y = targets[start:start + CHUNK_TOKENS]
        log_z = torch.logsumexp(z, dim=-1)
        picked = z.gather(1, y[:, None])[:, 0]
        with torch.no_grad():
            entropy = log_z - (F.softmax(z, dim=-1) * z).sum(-1) if stats else torch.zeros_like(log_z)
            top1 = z.argmax(-1) == y if stats else torch.zeros_like(y, dtype=torch.bool)
        parts.append((picked - log_z, entropy, top1))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty, torch.zeros(0, dtype=torch.bool, device=hidden.device)
    return tuple(torch.cat(column) for column in zip(*parts))


def backbone_states(model, **inputs) -> torch.Tensor:
    """The last hidden states of a causal LM's backbone (no head), for ``model(**inputs)``'s inputs."""
    inputs["use_cache"] = False
    return getattr(model, model.base_model_prefix)(**inputs).last_hidden_state


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` (one per True of ``mask``) laid out in ``mask``'s shape, zero elsewhere (stays differentiable)."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


def attach(model) -> None:
    """Make ``model(..., labels=y, fused_lm_head=True)`` (how TRL's SFTTrainer asks for the loss) project
    supervised positions only, through this module, with trainable token rows exact.

    ``model`` may be wrapped by PEFT; the causal LM under it must already carry TRL's fused forward
    (``trl.trainer.utils.add_fused_lm_head``, which SFTTrainer adds), which still serves every other call.
    """
    import functools
    import types

    from trl.trainer.utils import FusedCausalLMOutput

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    fused = causal.forward

    @functools.wraps(type(causal).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = head_of(self) if fused_lm_head and shift_labels is None and not args else None
        if head is None:
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch, **kwargs)
        kept, targets, mask = supervised(backbone_states(self, **kwargs), labels)
        logp, entropy, top1 = token_logprobs(head, kept, targets)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-logp.sum() / count, log_probs=_scatter(logp, mask),
                                   entropy=_scatter(entropy, mask), is_top1=_scatter(top1, mask), label_mask=mask)

    causal.forward = types.MethodType(forward, causal)
