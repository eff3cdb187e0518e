"""The score stage: conversations.parquet -> scores.parquet, in two streaming passes.

Pass 1 (sft_pipeline.score.scorer) keeps small per-row arrays; duplicates are then resolved
globally (sft_pipeline.score.dedup); pass 2 reads the batches again and writes them with one
boolean column per signal, the diagnostics, ``duplicate_of``, ``score`` and ``reasons``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.config import ScoreConfig
from sft_pipeline.errors import InputError
from sft_pipeline.files import open_parquet
from sft_pipeline.score import dedup, defaults, language
from sft_pipeline.score.scorer import N_ASSISTANT, N_TURNS, REPETITION_RATIO, ChunkResult, chunks, score_chunk

REQUIRED_COLUMNS = ("id", "messages")
DIGITS = 6  # scores are rounded so that 1 - 0.2 - 0.1 compares equal to 0.7
STAT_TYPES = {N_TURNS: np.int32, N_ASSISTANT: np.int32, constants.TOKENS_EST_COLUMN: np.int64,
              REPETITION_RATIO: np.float32, constants.LANGUAGE_COLUMN: language.CODE_DTYPE,
              constants.LANGUAGE_SCORE_COLUMN: np.float32}


@dataclass
class Scored:
    """Every per-row result, in input order, before it is written."""

    flags: dict[str, np.ndarray]  # signal -> fired, in defaults.SCORE_SIGNALS order
    stats: dict[str, np.ndarray]
    duplicate_of: pa.Array
    score: np.ndarray
    representative: np.ndarray | None  # row index of each row's cluster representative


def active_signals(cfg: ScoreConfig) -> set[str]:
    """The signals computed: ``score.signals``, less language id when no language is set.

    >>> sorted(active_signals(ScoreConfig(signals=["too_short", "wrong_language"])))
    ['too_short']
    """
    return set(cfg.signals) - (set() if cfg.languages else {defaults.SIGNAL_WRONG_LANGUAGE})


def score_conversations(conversations_path: Path, out_path: Path, cfg: ScoreConfig) -> dict:
    """Score every conversation; write ``out_path`` and return a summary for the manifest."""
    pf = open_conversations(conversations_path)
    return write_scores(pf, compute_scores(pf, cfg), Path(out_path), cfg)


def write_scores(pf: pq.ParquetFile, scored: Scored, out_path: Path, cfg: ScoreConfig) -> dict:
    """Pass 2: write the input rows with their scores; return the manifest summary."""
    columns = {**scored.flags, **scored.stats, constants.DUPLICATE_OF_COLUMN: scored.duplicate_of,
               constants.SCORE_COLUMN: scored.score}
    _write(pf, out_path, columns, scored.flags, cfg.batch_rows)
    return _summary(scored)


def compute_scores(pf: pq.ParquetFile, cfg: ScoreConfig) -> Scored:
    """Pass 1 over the batches, then the global duplicate resolution and the weighted score."""
    return finish(pf, pass_one(pf, cfg), cfg)


def pass_one(pf: pq.ParquetFile, cfg: ScoreConfig, row_groups: list[int] | None = None) -> ChunkResult:
    """Every per-row signal of the file (or of ``row_groups`` only), concatenated in row order."""
    wanted = active_signals(cfg)
    groups = range(pf.num_row_groups) if row_groups is None else row_groups
    n = sum(pf.metadata.row_group(g).num_rows for g in groups)
    # Signatures go straight into one preallocated matrix (concatenating would double it).
    sigs = np.empty((n, cfg.minhash_permutations), np.uint32) if defaults.SIGNAL_NEAR_DUPLICATE in wanted else None
    results, row = [], 0
    for batch in pf.iter_batches(batch_size=cfg.batch_rows, columns=["messages"], row_groups=list(groups)):
        for piece in chunks(batch, cfg.max_batch_bytes):
            result = score_chunk(piece, cfg, wanted)
            if sigs is not None:
                sigs[row: row + piece.num_rows], result.sigs = result.sigs, None
            results.append(result)
            row += piece.num_rows
    if not results:  # no rows: still every column, with the file's types
        field = pf.schema_arrow.field("messages")
        results = [score_chunk(pa.RecordBatch.from_arrays([pa.array([], field.type)], names=["messages"]),
                               cfg, wanted)]
    merged = concat_results(results)
    merged.sigs = sigs
    return merged


def concat_results(results: list[ChunkResult]) -> ChunkResult:
    """One ChunkResult holding the rows of ``results`` in order."""
    return ChunkResult(flags=_concat_flags(results), stats=_concat_stats(results),
                       keys=_concat(results, lambda r: r.keys), sigs=_concat(results, lambda r: r.sigs),
                       has_sig=_concat(results, lambda r: r.has_sig))


def finish(pf: pq.ParquetFile, first: ChunkResult, cfg: ScoreConfig) -> Scored:
    """Resolve duplicates over all rows of ``pf`` and weigh the signals into the score."""
    ids = pf.read(columns=["id"]).column("id").cast(pa.string()).chunks or [pa.array([], pa.string())]
    flags = dict(first.flags)
    rep = _resolve_duplicates(first, ids, cfg, flags)
    flags = {name: flags[name] for name in defaults.SCORE_SIGNALS if name in flags}
    score = weighted_score(flags, cfg.weights, pf.metadata.num_rows)
    return Scored(flags, first.stats, _duplicate_of(ids, rep), score, rep)


def open_conversations(path: Path) -> pq.ParquetFile:
    """Open and check the input; any problem is one InputError line naming the file."""
    pf = open_parquet(path, tuple(REQUIRED_COLUMNS))
    schema = pf.schema_arrow
    mtype = schema.field("messages").type
    is_list = pa.types.is_list(mtype) or pa.types.is_large_list(mtype)
    if not is_list or not pa.types.is_struct(mtype.value_type) \
            or {"role", "content"} - {f.name for f in mtype.value_type}:
        raise InputError(f"{path}: column 'messages' must be list<struct<role, content>>, got {mtype}")
    return pf


def _concat(results: list[ChunkResult], get) -> np.ndarray | None:
    parts = [get(r) for r in results]
    return np.concatenate(parts) if parts and parts[0] is not None else None


def _concat_flags(results: list[ChunkResult]) -> dict[str, np.ndarray]:
    names = list(results[0].flags) if results else []
    return {name: _concat(results, lambda r: r.flags[name]) for name in names}


def _concat_stats(results: list[ChunkResult]) -> dict[str, np.ndarray]:
    names = [k for k in STAT_TYPES if results and k in results[0].stats]
    return {k: _concat(results, lambda r: r.stats[k]).astype(STAT_TYPES[k]) for k in names}


def _resolve_duplicates(first: ChunkResult, ids: list[pa.Array], cfg: ScoreConfig, flags: dict) -> np.ndarray | None:
    """Set the duplicate flags; return each row's representative (None: dedup disabled)."""
    wanted = active_signals(cfg)
    if not wanted & {defaults.SIGNAL_EXACT_DUPLICATE, defaults.SIGNAL_NEAR_DUPLICATE}:
        return None
    exact, near, rep = dedup.resolve(id_rank(ids), first.keys, first.sigs, first.has_sig,
                                     cfg.near_duplicate_threshold)
    if defaults.SIGNAL_EXACT_DUPLICATE in wanted:
        flags[defaults.SIGNAL_EXACT_DUPLICATE] = exact
    if defaults.SIGNAL_NEAR_DUPLICATE in wanted:
        flags[defaults.SIGNAL_NEAR_DUPLICATE] = near
    return rep


def id_rank(ids: list[pa.Array]) -> np.ndarray:
    """Rank of every row by (id, input position); the smallest rank represents a cluster.

    >>> id_rank([pa.array(["b", "a"]), pa.array(["a"])]).tolist()
    [2, 0, 1]
    """
    column = pa.chunked_array(ids, type=pa.string())
    table = pa.table({"id": column, "row": pa.array(np.arange(len(column)))})
    order = pc.sort_indices(table, sort_keys=[("id", "ascending"), ("row", "ascending")]).to_numpy()
    rank = np.empty(len(column), dtype=np.int64)
    rank[order] = np.arange(len(column))
    return rank


def _duplicate_of(ids: list[pa.Array], rep: np.ndarray | None) -> pa.Array:
    n = sum(len(a) for a in ids)
    if rep is None:
        return pa.nulls(n, pa.string())
    column = pa.chunked_array(ids, type=pa.string()).combine_chunks()
    is_dup = pa.array(rep != np.arange(n))
    return pc.if_else(is_dup, column.take(pa.array(rep)), pa.scalar(None, pa.string()))


def weighted_score(flags: dict[str, np.ndarray], weights: dict[str, float], n: int) -> np.ndarray:
    """max(0, 1 - sum of the weights of fired signals), rounded to DIGITS.

    >>> weighted_score({"a": np.array([True, True]), "b": np.array([True, False])}, {"a": 0.2, "b": 0.1}, 2)
    array([0.7, 0.8])
    """
    penalty = np.zeros(n)
    for name, fired in flags.items():
        penalty += weights.get(name, 0.0) * fired
    return np.round(np.clip(1.0 - penalty, 0.0, 1.0), DIGITS)


def reasons_column(flags: dict[str, np.ndarray], n: int) -> pa.Array:
    """list<string> of the fired signal names per row, in the order of ``flags``.

    >>> reasons_column({"a": np.array([True, False]), "b": np.array([True, False])}, 2).to_pylist()
    [['a', 'b'], []]
    """
    names = list(flags)
    matrix = np.stack([flags[k] for k in names], axis=1) if names else np.zeros((n, 0), bool)
    rows, cols = np.nonzero(matrix)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    values = pa.array(np.array(names, dtype=object)[cols].tolist(), pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _write(pf: pq.ParquetFile, out_path: Path, columns: dict, flags: dict, batch_rows: int) -> None:
    """Pass 2: the input batches again, with the new columns appended."""
    added = [*columns, constants.REASONS_COLUMN]
    kept = [f for f in pf.schema_arrow if f.name not in added]
    schema = pa.schema(kept + [pa.field(k, _arrow(v).type) for k, v in columns.items()]
                       + [pa.field(constants.REASONS_COLUMN, pa.list_(pa.string()))])
    start = 0
    with pq.ParquetWriter(out_path, schema) as writer:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[f.name for f in kept]):
            end = start + batch.num_rows
            new = [_arrow(v[start:end]) for v in columns.values()]
            reasons = reasons_column({k: v[start:end] for k, v in flags.items()}, batch.num_rows)
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns + new + [reasons], schema=schema))
            start = end


def _arrow(values) -> pa.Array:
    return values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)


def _summary(scored: Scored) -> dict:
    n, score, rep = len(scored.score), scored.score, scored.representative
    dup = rep is not None and rep != np.arange(n)
    return {
        "rows": n,
        "mean_score": round(float(score.mean()), 4) if n else None,
        "rows_perfect": int((score == 1.0).sum()),
        "signals": {name: int(fired.sum()) for name, fired in scored.flags.items()},
        "duplicate_clusters": int(len(np.unique(rep[dup]))) if rep is not None else 0,
        "n_tokens_est": int(scored.stats[constants.TOKENS_EST_COLUMN].sum()) if n else 0,
    }
