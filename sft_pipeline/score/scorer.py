"""Pass 1 of scoring: every per-row signal of one chunk of conversations, vectorised.

A chunk is a record batch split so that it holds at most ``max_batch_bytes`` of message text;
its result keeps only small per-row arrays (flags, counts, an exact-duplicate key and a MinHash
signature), so memory stays bounded whatever the file size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_pipeline import constants
from sft_pipeline.config import ScoreConfig
from sft_pipeline.score import dedup, defaults, language, signals, text
from sft_pipeline.score.turns import Turns, flatten

N_TURNS, N_ASSISTANT, REPETITION_RATIO = "n_turns", "n_assistant_turns", "repetition_ratio"


@dataclass
class ChunkResult:
    """Small per-row results of one chunk of pass 1."""

    flags: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    keys: np.ndarray | None = None
    sigs: np.ndarray | None = None
    has_sig: np.ndarray | None = None


def chunks(batch: pa.RecordBatch, max_bytes: int) -> list[pa.RecordBatch]:
    """Split a batch so that each piece holds about ``max_bytes`` of message text or less."""
    flat_content = pc.struct_field(batch.column("messages").flatten(), "content")
    n_bytes = text.filled(pc.binary_length(flat_content), 0).to_numpy(zero_copy_only=False)
    lengths = text.filled(pc.list_value_length(batch.column("messages")), 0).to_numpy(zero_copy_only=False)
    row_bytes = np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=n_bytes, minlength=len(lengths))
    bounds = split_points(row_bytes, max_bytes)
    return [batch.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def split_points(row_bytes: np.ndarray, max_bytes: int) -> list[int]:
    """Chunk boundaries: a new chunk starts when a row starts past the next ``max_bytes``.

    So a chunk holds at most ``max_bytes`` plus its last row.

    >>> split_points(np.array([5, 5, 5, 20, 1]), 10), split_points(np.array([], int), 10)
    ([0, 2, 4, 5], [0])
    """
    if len(row_bytes) == 0:
        return [0]
    starts = np.cumsum(row_bytes) - row_bytes
    chunk = starts // max_bytes
    return [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(row_bytes)]


def score_chunk(batch: pa.RecordBatch, cfg: ScoreConfig, wanted: set[str]) -> ChunkResult:
    turns = flatten(batch.column("messages"))
    words = text.word_counts(turns.content)
    flags = signals.conversation_signals(turns, words, cfg, wanted)
    tokens = signals.token_estimate(turns, cfg)
    if defaults.SIGNAL_TOO_LONG in wanted:
        flags[defaults.SIGNAL_TOO_LONG] = tokens > cfg.max_tokens_est
    stats = {
        N_TURNS: turns.n_messages.astype(np.int32),
        N_ASSISTANT: np.bincount(turns.conv[turns.assistant], minlength=turns.n_convs).astype(np.int32),
        constants.TOKENS_EST_COLUMN: tokens,
    }
    if defaults.SIGNAL_WRONG_LANGUAGE in wanted:
        stats |= language.language_stats(turns, cfg)
        flags[defaults.SIGNAL_WRONG_LANGUAGE] = language.wrong_language(
            stats[constants.LANGUAGE_COLUMN], stats[constants.LANGUAGE_SCORE_COLUMN], cfg.languages,
            cfg.language_min_confidence)
    result = ChunkResult(flags=flags, stats=stats)
    if wanted & {defaults.SIGNAL_REPETITION, defaults.SIGNAL_NEAR_DUPLICATE}:
        _hash_signals(turns, cfg, wanted, result)
    if defaults.SIGNAL_EXACT_DUPLICATE in wanted:
        result.keys = dedup.exact_keys(turns)
    return result


def _hash_signals(turns: Turns, cfg: ScoreConfig, wanted: set[str], result: ChunkResult) -> None:
    """Repetition ratio and MinHash signatures, from one pass of word hashing."""
    hashes, owner = dedup.word_hashes(turns.content)
    conv = turns.conv[owner]
    if defaults.SIGNAL_REPETITION in wanted:  # repeats within each assistant turn, pooled per conversation
        mine = turns.assistant[owner]
        grams, groups = text.ngram_hashes(hashes[mine], owner[mine], cfg.repetition_ngram)
        ratio = text.repeated_fraction(grams, groups, turns.conv, turns.n_convs)
        result.stats[REPETITION_RATIO] = ratio.astype(np.float32)
        result.flags[defaults.SIGNAL_REPETITION] = ratio > cfg.repetition_threshold
    if defaults.SIGNAL_NEAR_DUPLICATE in wanted:
        shingles, groups = text.ngram_hashes(hashes, conv, cfg.minhash_ngram)
        result.sigs, result.has_sig = dedup.signatures(shingles, groups, turns.n_convs, cfg.minhash_permutations)


