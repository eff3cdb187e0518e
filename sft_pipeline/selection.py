"""Which rows a filter setting keeps (the filter stage), and the score column they are chosen by."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_pipeline.config import FilterConfig
from sft_pipeline.constants import SCORE_COLUMN
from sft_pipeline.tokenize.split import smallest, unit_hash

BY_THRESHOLD, BY_TOP_FRACTION, BY_RANDOM_ROWS = "threshold", "top_fraction", "random_rows"
SALT_RANDOM = "random_rows"  # the id hash of a random-rows filter (independent of the tokenize stage's)


def scores_of(table: pa.Table) -> np.ndarray:
    """The score stage's quality scores of ``table``'s rows, as floats.

    >>> scores_of(pa.table({"score": [1, 0.5]})).tolist()
    [1.0, 0.5]
    """
    return table.column(SCORE_COLUMN).to_numpy(zero_copy_only=False).astype(float)


def keep_mask(score: np.ndarray, ids: pa.ChunkedArray, cfg: FilterConfig, seed: int = 0) -> tuple[np.ndarray, str]:
    """Which rows ``cfg`` keeps, and by which method (``seed``: the random-rows draw's).

    >>> keep_mask(np.array([0.5, 0.9]), pa.chunked_array([["a", "b"]]), FilterConfig(threshold=0.7))[0].tolist()
    [False, True]
    """
    if cfg.random_rows is not None:
        return random_mask(ids, cfg.random_rows, seed), BY_RANDOM_ROWS
    if cfg.top_fraction is None:
        return score >= cfg.threshold, BY_THRESHOLD
    return top_fraction_mask(score, ids, cfg.top_fraction), BY_TOP_FRACTION


def random_mask(ids: pa.ChunkedArray, count: int, seed: int) -> np.ndarray:
    """Keep ``count`` rows at random: those of smallest id hash under ``seed`` (then input order), so the draw
    does not depend on row order.

    >>> int(random_mask(pa.chunked_array([["a", "b", "c", "d"]]), 2, seed=0).sum())
    2
    >>> random_mask(pa.chunked_array([["a", "b"]]), 5, seed=0).tolist()
    [True, True]
    """
    keys = [unit_hash(row_id, seed, SALT_RANDOM) for row_id in ids.to_pylist()]
    keep = np.zeros(len(keys), dtype=bool)
    keep[sorted(smallest(range(len(keys)), keys, count))] = True
    return keep


def top_fraction_mask(score: np.ndarray, ids: pa.ChunkedArray, fraction: float) -> np.ndarray:
    """Keep the best ``round(fraction * n)`` rows: by score, then smallest id, then input order.

    >>> top_fraction_mask(np.array([0.5, 0.9, 0.5, 0.1]), pa.chunked_array([["b", "x", "a", "c"]]), 0.5).tolist()
    [False, True, True, False]
    """
    n = len(score)
    k = int(np.floor(fraction * n + 0.5))
    table = pa.table({"score": score, "id": ids, "row": np.arange(n)})
    order = pc.sort_indices(table, sort_keys=[("score", "descending"), ("id", "ascending"), ("row", "ascending")])
    keep = np.zeros(n, dtype=bool)
    keep[order.to_numpy()[:k]] = True
    return keep
