"""Batched chat generation with left padding: greedy by default, sampling with a seed.

Prompts are sorted by length so each batch carries little padding; results come
back in the caller's order. A generation *stopped* when it emitted an end-of-turn
or EOS token before ``max_new_tokens``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from sft_pipeline.constants import ROLE_USER

log = logging.getLogger(__name__)

# End-of-turn markers of common chat templates; those present in a vocabulary count as stops.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
                      "<|endoftext|>", "</s>")
LEFT = "left"
# A batch's prompts are padded to its longest: IFBench has one prompt of ~2,200 tokens among hundreds
# of ~100, and 32 rows padded to it took minutes of prefill on a CPU.
MAX_PADDED_PROMPT_TOKENS = 8192


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str
    new_tokens: int
    stopped: bool


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS ids of the tokenizer and model, plus end-of-turn tokens found in the vocabulary."""
    ids = set(_as_list(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    ids.update(_as_list(getattr(gen_cfg, "eos_token_id", None)))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[tok] for tok in END_OF_TURN_TOKENS if tok in vocab)
    return sorted(ids)


def chat_prompt(tokenizer, prompt: str) -> str:
    """One user turn rendered with the chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template(
        [{"role": ROLE_USER, "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def first_stop(tokens: Sequence[int], stops: set[int]) -> int | None:
    """Index of the first stop token, or None.

    >>> first_stop([5, 7, 2, 0], {2, 0}), first_stop([5, 7], {2})
    (2, None)
    """
    return next((i for i, t in enumerate(tokens) if t in stops), None)


def _generation_config(tokenizer, stops: list[int], *, max_new_tokens: int, do_sample: bool,
                       temperature: float):
    from transformers import GenerationConfig

    kwargs = {"temperature": temperature} if do_sample else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stops,
                            pad_token_id=tokenizer.pad_token_id, **kwargs)


@torch.inference_mode()
def _generate_batch(model, tokenizer, texts: list[str], gen_cfg, stops: set[int]) -> list[tuple]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**enc, generation_config=gen_cfg)
    rows = []
    for seq in out[:, enc["input_ids"].shape[1]:].tolist():
        stop = first_stop(seq, stops)
        kept = seq if stop is None else seq[:stop]
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        rows.append((text, len(kept) + (stop is not None), stop is not None))
    return rows


def generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0) -> list[Generation]:
    """Generate one reply per prompt; sampling (if asked) is seeded, so runs repeat."""
    if not prompts:
        return []
    stops = stop_token_ids(tokenizer, model)
    gen_cfg = _generation_config(tokenizer, stops, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature)
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    results: dict[int, Generation] = {}
    side, tokenizer.padding_side = tokenizer.padding_side, LEFT
    torch.manual_seed(seed)
    progress = ProgressLog("generating", len(order))
    try:
        for batch in batches(order, lengths, batch_size):
            rows = _generate_batch(model, tokenizer, [texts[i] for i in batch], gen_cfg, set(stops))
            for i, (text, n_new, stopped) in zip(batch, rows):
                results[i] = Generation(prompt=prompts[i], text=text, new_tokens=n_new, stopped=stopped)
            progress.update(len(batch))
    finally:
        tokenizer.padding_side = side
    return [results[i] for i in range(len(prompts))]


def batches(order: list[int], lengths: list[int], batch_size: int,
            max_padded_tokens: int = MAX_PADDED_PROMPT_TOKENS) -> list[list[int]]:
    """``order`` (sorted by length) cut into batches of at most ``batch_size`` rows whose prompts, padded to
    the longest, hold at most ``max_padded_tokens`` (a single longer prompt goes alone).

    >>> batches([0, 1, 2, 3], [10, 10, 10, 500], 3, max_padded_tokens=600)
    [[0, 1, 2], [3]]
    >>> batches([0, 1, 2], [100, 200, 300], 8, max_padded_tokens=600)
    [[0, 1], [2]]
    """
    out: list[list[int]] = [[]]
    for i in order:
        if out[-1] and (len(out[-1]) == batch_size or (len(out[-1]) + 1) * lengths[i] > max_padded_tokens):
            out.append([])
        out[-1].append(i)
    return [b for b in out if b]


class ProgressLog:
    """Logs ``what done/total (rate/s, time left)`` about every ``every_s`` seconds and at the end."""

    def __init__(self, what: str, total: int, every_s: float = 20.0):
        self.what, self.total, self.every_s, self.done = what, total, every_s, 0
        self.started = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last, rate = now, self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate else 0.0
        log.info("%s %d/%d (%.1f/s, %.0f s left)", self.what, self.done, self.total, rate, left)
