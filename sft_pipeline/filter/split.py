"""Splitting scored rows into kept and dropped (``filtered.parquet``, ``dropped.parquet``), with the
threshold sweep and the score histogram; which rows a setting keeps is ``sft_pipeline.selection``
(threshold, top fraction, or ``random_rows``: the random control of ``sft-pipeline sweep --random-control``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.config import FilterConfig
from sft_pipeline.errors import VerificationError
from sft_pipeline.files import open_parquet, write_json
from sft_pipeline.selection import BY_RANDOM_ROWS, BY_THRESHOLD, keep_mask, scores_of

SWEEP_STEPS = 10  # thresholds 0.0, 0.1, ..., 1.0
DECIDING_COLUMNS = ("id", constants.SCORE_COLUMN, constants.TOKENS_EST_COLUMN)
BATCH_ROWS = 8192
HIST_BINS = 21  # bars centred on 0.00, 0.05, ..., 1.00 (weights are multiples of 0.05 or 0.1)


def filter_scored(scores_path: Path, out_dir: Path, cfg: FilterConfig, seed: int = 0) -> dict:
    """Split scores.parquet into kept and dropped rows; write the sweep and histogram (``seed``: random rows')."""
    pf = open_scores(Path(scores_path))
    table = pf.read(columns=list(DECIDING_COLUMNS))
    score = scores_of(table)
    tokens = table.column(constants.TOKENS_EST_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64)
    keep, mode = keep_mask(score, table.column("id"), cfg, seed)
    if mode == BY_THRESHOLD:
        cutoff = cfg.threshold
    elif mode == BY_RANDOM_ROWS:  # no score decides
        cutoff = None
    else:  # the lowest score kept
        cutoff = float(score[keep].min()) if keep.any() else None
    out_dir = Path(out_dir)
    kept, dropped = write_split(pf, keep, out_dir / constants.FILTERED_FILE, out_dir / constants.DROPPED_FILE, mode)
    if kept + dropped != len(score) or kept != int(keep.sum()):
        raise VerificationError(f"{scores_path}: filter wrote {kept} + {dropped} rows for {len(score)} input rows")
    sweep = threshold_sweep(score, tokens)
    write_json(out_dir / constants.SWEEP_FILE, sweep)
    plot_histogram(score, cutoff, out_dir / constants.HISTOGRAM_FILE)
    return {
        "method": mode,
        "cutoff": cutoff,
        "rows_in": len(score),
        "rows_kept": kept,
        "rows_dropped": dropped,
        "tokens_kept": int(tokens[keep].sum()),
        "sweep": sweep,
    }


def open_scores(path: Path) -> pq.ParquetFile:
    return open_parquet(path, tuple(DECIDING_COLUMNS), " (run the score stage first)")


def threshold_sweep(score: np.ndarray, tokens: np.ndarray) -> list[dict]:
    """Rows and estimated tokens with score >= t, for t = 0.0, 0.1, ..., 1.0.

    >>> threshold_sweep(np.array([0.7, 1.0]), np.array([10, 5]))[7:9]
    [{'threshold': 0.7, 'rows': 2, 'tokens': 15}, {'threshold': 0.8, 'rows': 1, 'tokens': 5}]
    """
    sweep = []
    for step in range(SWEEP_STEPS + 1):
        t = round(step / SWEEP_STEPS, 1)
        kept = score >= t
        sweep.append({"threshold": t, "rows": int(kept.sum()), "tokens": int(tokens[kept].sum())})
    return sweep


def write_split(pf: pq.ParquetFile, keep: np.ndarray, kept_path: Path, dropped_path: Path, mode: str) -> tuple[int, int]:
    """Stream every row into one of two files; return (kept rows, dropped rows) written."""
    schema = pa.schema([f for f in pf.schema_arrow if f.name != constants.DROPPED_BY_COLUMN])
    dropped_schema = schema.append(pa.field(constants.DROPPED_BY_COLUMN, pa.string()))
    counts, start = [0, 0], 0
    with pq.ParquetWriter(kept_path, schema) as kept_w, pq.ParquetWriter(dropped_path, dropped_schema) as drop_w:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=schema.names):
            mask = keep[start: start + batch.num_rows]
            start += batch.num_rows
            kept, dropped = batch.filter(pa.array(mask)), batch.filter(pa.array(~mask))
            kept_w.write_batch(kept)
            by = pa.array([mode] * dropped.num_rows, pa.string())
            drop_w.write_batch(pa.RecordBatch.from_arrays(dropped.columns + [by], schema=dropped_schema))
            counts[0] += kept.num_rows
            counts[1] += dropped.num_rows
    return counts[0], counts[1]


def plot_histogram(score: np.ndarray, cutoff: float | None, path: Path) -> None:
    """Histogram of scores with the cutoff marked (matplotlib's Agg canvas, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    half = 0.5 / (HIST_BINS - 1)
    ax.hist(score, bins=np.linspace(-half, 1 + half, HIST_BINS + 1), color="#4c72b0", edgecolor="white")
    if cutoff is not None:
        ax.axvline(cutoff, color="#c44e52", linestyle="--", label=f"keep >= {cutoff:g}")
        ax.legend(loc="upper left")
    ax.set(xlabel="quality score", ylabel="conversations", title=f"Score distribution ({len(score)} rows)")
    fig.tight_layout()
    fig.savefig(path)
