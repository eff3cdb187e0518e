"""The chat template's control tokens, and training their embedding rows when the base model never learned them.

A pretrained base model has never read or written its chat template's control tokens
(Gemma's ``<start_of_turn>`` / ``<end_of_turn>``, ChatML's ``<|im_start|>`` / ``<|im_end|>``).
LoRA leaves the embeddings frozen (and, when they are tied, the LM head with them), so a row that
was never trained stays as it was initialised: the model may never learn to read a turn boundary,
or to end its turn. Such rows stand out by their norm: far below the typical row's (Unsloth's
``fix_untrained_tokens`` looks for the same thing). ``train.template_tokens`` chooses which rows
train, through PEFT's ``trainable_token_indices`` (saved with the adapter, loaded back by
``AutoPeftModelForCausalLM``, exact in the loss: :mod:`sft_pipeline.supervised_head`):

* ``untrained``: the template's control tokens whose row norm is below ``untrained_norm_ratio`` times
  the median row norm;
* ``all``: every special token the template writes;
* ``none``: none.
"""

from __future__ import annotations

import logging

import torch

from sft_pipeline.constants import ROLE_ASSISTANT, ROLE_USER

log = logging.getLogger(__name__)

UNTRAINED, ALL, NONE = "untrained", "all", "none"  # not "off": YAML reads it as false
SETTINGS = (UNTRAINED, ALL, NONE)
PROBE = [{"role": ROLE_USER, "content": "Hi."}, {"role": ROLE_ASSISTANT, "content": "Hello."},
         {"role": ROLE_USER, "content": "Bye."}, {"role": ROLE_ASSISTANT, "content": "Goodbye."}]


def template_token_ids(tokenizer) -> list[int]:
    """Ids of the special tokens the chat template writes (a BOS it writes included), in id order."""
    text = tokenizer.apply_chat_template(PROBE, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return sorted(set(ids) & special)


def untrained_rows(weight: torch.Tensor, ids: list[int], ratio: float) -> list[int]:
    """The ``ids`` whose row norm is below ``ratio`` x the median row norm of ``weight``.

    >>> w = torch.ones(6, 4); w[2] *= 0.01
    >>> untrained_rows(w, [1, 2, 3], 0.5)
    [2]
    """
    norms = weight.detach().float().norm(dim=1)
    limit = ratio * norms.median()
    return [i for i in ids if norms[i] < limit]


def choose(model, tokenizer, setting: str, ratio: float) -> list[int]:
    """The token rows to train for ``train.template_tokens`` (logged with each row's norm)."""
    if setting == NONE:
        return []
    ids = template_token_ids(tokenizer)
    weight = model.get_input_embeddings().weight
    chosen = ids if setting == ALL else untrained_rows(weight, ids, ratio)
    norms = weight.detach().float().norm(dim=1)
    median = float(norms.median())
    log.info("template tokens %s (row norm / median): %s; training %s", setting,
             ", ".join(f"{tokenizer.convert_ids_to_tokens(i)}={float(norms[i]) / median:.2f}" for i in ids),
             [tokenizer.convert_ids_to_tokens(i) for i in chosen] or "none")
    return chosen


def keep_rows_in_fp32(model) -> None:
    """Trained token rows hold whole row values, not small deltas: in bf16 (where TRL puts QLoRA's trainable
    weights) an update below 1/256 of the value rounds away, so they stay fp32."""
    for name, param in model.named_parameters():
        if "trainable_tokens_delta" in name and param.dtype != torch.float32:
            param.data = param.data.float()
