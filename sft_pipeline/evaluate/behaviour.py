"""Behaviour of generations: stopping, repetition, length and the seed's response heuristics.

Each helper is a small pure function over text; :func:`behaviour_metrics` turns a
list of generations into rates (fractions in [0, 1]) and means.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from sft_pipeline.evaluate.generate import Generation

# The seed's sycophantic openers, matched at the start of a response (case-insensitive).
SYCOPHANTIC_OPENERS = ("sure", "certainly", "of course", "great question")
_OPENER_RE = re.compile(r"^\W*(?:" + "|".join(SYCOPHANTIC_OPENERS) + r")\b\s*[!,.]", re.IGNORECASE)
_WORD_RE = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens.

    >>> words("Hello, World! It's 2 pm.")
    ['hello', 'world', 'it', 's', '2', 'pm']
    """
    return _WORD_RE.findall(text.lower())


def ngram_repetition(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram (0: none, near 1: a loop).

    >>> ngram_repetition("the cat sat on the mat", 2)
    0.0
    >>> ngram_repetition("go go go go go", 2)
    0.75
    >>> ngram_repetition("too short", 3)
    0.0
    """
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_sycophantic(text: str) -> bool:
    """True when the response opens with a stock opener such as "Sure!" or "Great question!".

    >>> is_sycophantic("Certainly! Here is the list."), is_sycophantic("Of course, here it is.")
    (True, True)
    >>> is_sycophantic("Surely not."), is_sycophantic("The answer is 4.")
    (False, False)
    """
    return bool(_OPENER_RE.match(text))


def is_too_short(text: str, min_words: int = 5) -> bool:
    """True when the response has fewer than ``min_words`` words.

    >>> is_too_short("Yes."), is_too_short("The capital of France is Paris.")
    (True, False)
    """
    return len(words(text)) < min_words


def rate(flags: Iterable[bool]) -> float:
    """Fraction of true flags (0.0 when empty).

    >>> rate([True, False, True, True]), rate([])
    (0.75, 0.0)
    """
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def response_record(gen: Generation, *, ngram: int = 3, min_words: int = 5) -> dict:
    """One generation's per-item behaviour (kept in eval.json and resampled by the bootstrap).

    >>> response_record(Generation("p", "Sure! Yes.", 4, True), ngram=2, min_words=5)
    {'stopped': True, 'new_tokens': 4, 'words': 2, 'repetition': 0.0, 'sycophantic': True, 'too_short': True}
    """
    return {"stopped": gen.stopped, "new_tokens": gen.new_tokens, "words": len(words(gen.text)),
            "repetition": ngram_repetition(gen.text, ngram), "sycophantic": is_sycophantic(gen.text),
            "too_short": is_too_short(gen.text, min_words)}


# behaviour metric -> the per-item record field it averages
RECORD_FIELDS = {"stop_rate": "stopped", "repetition_rate": "repetition", "mean_new_tokens": "new_tokens",
                 "mean_words": "words", "sycophantic_rate": "sycophantic", "too_short_rate": "too_short"}


def behaviour_items(records: Sequence[dict]) -> dict[str, list[float]]:
    """Per-generation values of each behaviour metric (the metric is their mean)."""
    return {metric: [float(r[field]) for r in records] for metric, field in RECORD_FIELDS.items()}


def behaviour_metrics(gens: Sequence[Generation], *, ngram: int = 3, min_words: int = 5) -> dict[str, float]:
    """Rates and means over one model's generations."""
    items = behaviour_items([response_record(g, ngram=ngram, min_words=min_words) for g in gens])
    return {metric: _mean(values) for metric, values in items.items()}
