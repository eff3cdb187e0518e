"""Per-turn heuristics (the seed's four, refusals, AI disclaimers) and conversation-level ones.

Multi-turn rule: each assistant turn is scored against the user turn just before it (no
user turn before it: an empty instruction, as the seed would see it). A turn-level signal
fires for the conversation when the share of its assistant turns that fire it is at least
``cfg.min_turn_fraction[signal]`` (default 0.5 for the length heuristics: a multi-turn chat
may have a short "You're welcome!" turn), or on any single turn for signals not listed there
(style markers such as "Sure!" or "As an AI language model" are learnt from one turn).
A single-turn conversation therefore scores exactly as the seed's ``score_sft_example``
(except that openers are matched after leading whitespace).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_pipeline.config import ScoreConfig
from sft_pipeline.errors import ConfigError
from sft_pipeline.score import defaults, text
from sft_pipeline.score.turns import ASSISTANT, SYSTEM, UNKNOWN_ROLE, Turns, instruction_index


def turn_signals(turns: Turns, words: np.ndarray, cfg: ScoreConfig, wanted: set[str]) -> dict[str, np.ndarray]:
    """Boolean arrays over the assistant turns, one per wanted turn-level signal."""
    asst = np.flatnonzero(turns.assistant)
    content = turns.content.take(pa.array(asst))
    response_words = words[asst]
    instr = instruction_index(turns)[asst]
    instruction_words = np.where(instr >= 0, words[np.maximum(instr, 0)], 0)
    checks = {
        defaults.SIGNAL_TOO_SHORT: lambda: response_words < cfg.min_response_words,
        defaults.SIGNAL_TOO_VERBOSE: lambda: response_words > instruction_words * cfg.max_verbosity_ratio,
        defaults.SIGNAL_SYCOPHANTIC: lambda: text.starts_with_any(content, cfg.sycophantic_openers),
        defaults.SIGNAL_HALLUCINATION: lambda: text.contains_any(content, cfg.hallucination_markers)
        | text.contains_any(content, cfg.hedge_phrases, cfg.hedge_chars),
        defaults.SIGNAL_REFUSAL: lambda: _regex(content, cfg.refusal_pattern, cfg.refusal_chars, "refusal_pattern"),
        defaults.SIGNAL_AI_DISCLAIMER: lambda: _regex(content, cfg.disclaimer_pattern, None, "disclaimer_pattern"),
    }
    return {name: check() for name, check in checks.items() if name in wanted}


def _regex(content: pa.Array, pattern: str, head_chars: int | None, field: str) -> np.ndarray:
    try:
        return text.matches(content, pattern, head_chars)
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"score.{field}: invalid RE2 pattern: {str(exc).splitlines()[0]}") from None


def aggregate_turns(fired: np.ndarray, turn_conv: np.ndarray, n_convs: int, min_fraction: float | None) -> np.ndarray:
    """Conversation flags from assistant-turn flags: any turn, or at least ``min_fraction`` of them.

    >>> conv = np.array([0, 0, 1, 1, 1])
    >>> fired = np.array([True, False, True, False, False])
    >>> aggregate_turns(fired, conv, 3, None).tolist(), aggregate_turns(fired, conv, 3, 0.5).tolist()
    ([True, True, False], [True, False, False])
    """
    hits = np.bincount(turn_conv[fired], minlength=n_convs)
    if min_fraction is None:
        return hits > 0
    totals = np.bincount(turn_conv, minlength=n_convs)
    return (hits > 0) & (hits >= min_fraction * totals)


def bad_structure(turns: Turns, words: np.ndarray) -> np.ndarray:
    """Conversations whose turn structure is unusable for SFT.

    Fires on: no messages; an unknown role; a system message after the first position; the
    first non-system turn not from the user; two user or two assistant turns in a row; a
    last turn that is not the assistant's (unanswered); an empty user or assistant turn.

    >>> from sft_pipeline.score.turns import flatten
    >>> def msgs(*roles): return [{"role": r, "content": "some text"} for r in roles]
    >>> t = flatten(pa.array([msgs("system", "user", "assistant"), msgs("user", "assistant", "user"),
    ...                       msgs("assistant"), msgs("user", "user", "assistant"), []]))
    >>> bad_structure(t, np.full(len(t.role), 2)).tolist()
    [False, True, True, True, True]
    """
    role, conv, n = turns.role, turns.conv, turns.n_convs
    bad = np.zeros(len(role), dtype=bool)
    bad |= role == UNKNOWN_ROLE
    bad |= (role == SYSTEM) & (turns.position > 0)
    bad |= (role != SYSTEM) & (words == 0)
    prev = turns.previous()
    prev_role = np.where(prev >= 0, role[np.maximum(prev, 0)], SYSTEM)
    bad |= (role != SYSTEM) & (role == prev_role)  # no alternation
    bad |= (role == ASSISTANT) & (prev_role == SYSTEM)  # conversation opens with the assistant
    out = np.bincount(conv[bad], minlength=n) > 0
    out |= turns.n_messages == 0
    ends = np.cumsum(turns.n_messages) - 1
    has = turns.n_messages > 0
    out[has] |= role[ends[has]] != ASSISTANT
    return out


def token_estimate(turns: Turns, cfg: ScoreConfig) -> np.ndarray:
    """Approximate tokens per conversation: ceil(UTF-8 bytes / bytes_per_token) per message
    plus ``template_tokens_per_message`` for the chat template's role markers (about 4 bytes
    per token is the usual English BPE rule of thumb; code and non-Latin scripts run higher).

    >>> from sft_pipeline.score.turns import flatten
    >>> t = flatten(pa.array([[{"role": "user", "content": "x" * 10}, {"role": "assistant", "content": "ok"}]]))
    >>> token_estimate(t, ScoreConfig()).tolist()
    [12]
    """
    n_bytes = pc.binary_length(turns.content).to_numpy(zero_copy_only=False).astype(np.int64)
    per_message = np.ceil(n_bytes / cfg.bytes_per_token).astype(np.int64) + cfg.template_tokens_per_message
    return text.group_sums(per_message, turns.conv, turns.n_convs)


def conversation_signals(turns: Turns, words: np.ndarray, cfg: ScoreConfig, wanted: set[str]) -> dict[str, np.ndarray]:
    """All wanted turn-level signals aggregated per conversation, plus bad_structure."""
    asst_conv = turns.conv[turns.assistant]
    fired = {
        name: aggregate_turns(flags, asst_conv, turns.n_convs, cfg.min_turn_fraction.get(name))
        for name, flags in turn_signals(turns, words, cfg, wanted).items()
    }
    if defaults.SIGNAL_BAD_STRUCTURE in wanted:
        fired[defaults.SIGNAL_BAD_STRUCTURE] = bad_structure(turns, words)
    return fired
