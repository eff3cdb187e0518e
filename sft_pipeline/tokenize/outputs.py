"""The tokenize stage's files and counts: ``train.parquet`` (packed or not), ``heldout.parquet``,
``tokenize_dropped.parquet`` and ``mask_preview.md``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.config import TokenizeConfig
from sft_pipeline.tokenize.masks import Encoded
from sft_pipeline.tokenize.packing import list_array, pack_rows, packing_efficiency
from sft_pipeline.tokenize.preview import mask_preview
from sft_pipeline.tokenize.template import TemplateInfo

SPLIT_TRAIN, SPLIT_HELDOUT = "train", "heldout"
PERCENTILES = (50, 95)
DROPPED_SCHEMA = pa.schema([("id", pa.string()), ("split", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class Rows:
    """The stage's input rows: the filter stage's table, its ids and conversations (by row index)."""

    table: pa.Table
    ids: list[str]
    conversations: list[list[dict]]


@dataclass(frozen=True)
class Drop:
    """One row left out of the token files (a row of ``tokenize_dropped.parquet``)."""

    id: str
    split: str
    reason: str


@dataclass(frozen=True)
class Part:
    """One split's rows (indices into ``Rows``, in input order) and their encodings."""

    name: str
    indices: list[int]
    encoded: list[Encoded]

    def ids(self, rows: Rows) -> list[str]:
        return [rows.ids[i] for i in self.indices]

    def keep(self, positions: Sequence[int]) -> Part:
        """The part with only the rows at ``positions`` (into this part)."""
        return Part(self.name, [self.indices[p] for p in positions], [self.encoded[p] for p in positions])


@dataclass(frozen=True)
class Tokenizing:
    """What every step of one tokenize run uses: the tokenizer, its template's markers, the stage's config."""

    tokenizer: Any
    info: TemplateInfo
    cfg: TokenizeConfig
    template: str  # the chat template, as messages name it

    @property
    def markers(self) -> tuple[str, str]:
        return self.info.mid_marker, self.info.last_marker


def drops_of(rows: Rows, indices: Sequence[int], split: str, reason: str) -> list[Drop]:
    return [Drop(rows.ids[i], split, reason) for i in indices]


def length_stats(encoded: Sequence[Encoded], max_length: int) -> dict:
    full = np.array([e.full_length for e in encoded], dtype=np.int64)
    if not len(full):
        return {"length_p50": 0, "length_p95": 0, "length_max": 0, "pct_truncated_at_max_length": 0.0}
    p50, p95 = np.percentile(full, PERCENTILES)
    return {"length_p50": int(p50), "length_p95": int(p95), "length_max": int(full.max()),
            "pct_truncated_at_max_length": round(100.0 * float((full > max_length).mean()), 2)}


def eot_stats(eots: Sequence[tuple[int, bool]]) -> dict:
    """Supervised end-of-turn markers per train row.

    >>> eot_stats([(2, True), (0, False), (1, True), (1, False)])["eot_per_row_mean"]
    1.0
    >>> eot_stats([(2, True), (0, False), (1, True), (1, False)])["pct_rows_ending_in_eot"]
    50.0
    """
    counts = np.array([c for c, _ in eots], dtype=np.int64)
    if not len(counts):
        return {"eot_supervised": 0, "eot_per_row_min": 0, "eot_per_row_mean": 0.0, "eot_per_row_max": 0,
                "rows_without_eot": 0, "pct_rows_ending_in_eot": 0.0}
    return {"eot_supervised": int(counts.sum()), "eot_per_row_min": int(counts.min()),
            "eot_per_row_mean": round(float(counts.mean()), 3), "eot_per_row_max": int(counts.max()),
            "rows_without_eot": int((counts == 0).sum()),
            "pct_rows_ending_in_eot": round(100.0 * sum(last for _, last in eots) / len(eots), 2)}


def preview_positions(conversations: Sequence[list[dict]], count: int) -> list[int]:
    """Multi-turn rows first (they show earlier turns supervised), then input order."""
    turns = [sum(m["role"] == constants.ROLE_ASSISTANT for m in conv) for conv in conversations]
    return sorted(range(len(conversations)), key=lambda p: (turns[p] < 2, p))[:count]


def _train_table(train: Part, rows: Rows, cfg: TokenizeConfig) -> tuple[pa.Table, dict]:
    """The train rows as written (packed when ``cfg.packing``) and the packing counts."""
    ids = train.ids(rows)
    input_ids = list_array([e.input_ids for e in train.encoded])
    labels = list_array([e.labels for e in train.encoded])
    if not cfg.packing:
        return pa.table({"id": pa.array(ids, pa.string()), "input_ids": input_ids, "labels": labels}), {}
    table = pack_rows(ids, input_ids, labels, cfg.max_length)
    return table, {"packed_rows": table.num_rows,
                   "packing_efficiency": round(packing_efficiency(table, cfg.max_length), 4)}


def _heldout_table(heldout: Part, rows: Rows) -> pa.Table:
    return pa.table({
        "id": pa.array(heldout.ids(rows), pa.string()),
        "messages": rows.table.column("messages").take(pa.array(heldout.indices, pa.int64())),
        "input_ids": list_array([e.input_ids for e in heldout.encoded]),
        "labels": list_array([e.labels for e in heldout.encoded]),
    })


def write_outputs(out_dir: Path, rows: Rows, train: Part, heldout: Part, drops: Sequence[Drop],
                  job: Tokenizing) -> dict:
    """Write the four files; return the counts of what was written."""
    stats: dict = {"train_rows": len(train.indices), "heldout_rows": len(heldout.indices)}
    train_table, packing = _train_table(train, rows, job.cfg)
    stats.update(packing)
    pq.write_table(train_table, out_dir / constants.TRAIN_TOKENS_FILE)
    pq.write_table(_heldout_table(heldout, rows), out_dir / constants.HELDOUT_TOKENS_FILE)
    pq.write_table(pa.Table.from_pylist([asdict(d) for d in drops], schema=DROPPED_SCHEMA),
                   out_dir / constants.TOKENIZE_DROPPED_FILE)
    stats.update(
        truncated_rows=sum(e.truncated for e in train.encoded),
        supervised_tokens=sum(e.supervised for e in train.encoded),
        train_tokens=sum(len(e.input_ids) for e in train.encoded),
        dropped_rows=len(drops),
    )
    ids = train.ids(rows)
    shown = preview_positions([rows.conversations[i] for i in train.indices], job.cfg.preview_rows)
    preview = [(ids[p], train.encoded[p].input_ids, train.encoded[p].labels) for p in shown]
    (out_dir / constants.MASK_PREVIEW_FILE).write_text(mask_preview(preview, job.tokenizer, job.markers))
    return stats
