"""Read the tokenize stage's Parquet file into a `datasets.Dataset`, checking every row.

Two layouts are accepted, exactly as the tokenize stage writes them:

* unpacked: ``id``, ``input_ids``, ``labels`` (one conversation per row);
* packed: ``ids``, ``input_ids``, ``labels``, ``position_ids``, ``seq_lengths``
  (several conversations per row; TRL's collator rebuilds positions from
  ``seq_lengths`` and trains padding-free).

Labels are used as they are (``IGNORE_INDEX`` on non-assistant tokens), so a bad
row is an input error naming the file, the row and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sft_pipeline.constants import IGNORE_INDEX
from sft_pipeline.errors import InputError

UNPACKED_COLUMNS = ("input_ids", "labels")
PACKED_COLUMNS = ("input_ids", "labels", "seq_lengths")
SEQ_LENGTHS = "seq_lengths"
ID_COLUMNS = ("id", "ids")


@dataclass(frozen=True)
class TrainData:
    """The training rows and what they hold."""

    dataset: object  # datasets.Dataset with the model columns only
    packed: bool
    rows: int
    tokens: int
    supervised_tokens: int
    rows_without_supervision: int
    max_row_tokens: int

    def stats(self) -> dict:
        return {
            "rows": self.rows,
            "packed": self.packed,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "rows_without_supervision": self.rows_without_supervision,
            "max_row_tokens": self.max_row_tokens,
        }


def list_sums(arr: pa.ListArray, values: pa.Array | None = None) -> np.ndarray:
    """Sum of each list in a list array (0 for an empty list); ``values`` replaces the flattened items.

    >>> list_sums(pa.array([[1, 2], [], [5]])).tolist()
    [3, 0, 5]
    >>> list_sums(pa.array([[1, 2], [], [5]]), pa.array([True, False, True])).tolist()
    [1, 0, 1]
    """
    values = pc.list_flatten(arr) if values is None else values
    values = values.to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.cumsum(lengths)
    totals = np.concatenate([[0], np.cumsum(values)])
    return totals[ends] - totals[ends - lengths]


def first_bad_row(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask``, or None.

    >>> first_bad_row(np.array([False, True, True])), first_bad_row(np.array([False]))
    (1, None)
    """
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _where(table: pa.Table, row: int) -> str:
    for name in ID_COLUMNS:
        if name in table.column_names:
            return f"row {row} ({name} {table.column(name)[row].as_py()})"
    return f"row {row}"


def _check(path: Path, table: pa.Table, bad: np.ndarray, problem: str) -> None:
    row = first_bad_row(bad)
    if row is not None:
        raise InputError(f"{path}: {_where(table, row)}: {problem}")


def _validate(path: Path, table: pa.Table, packed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check every row; return token and supervised-token counts per row."""
    ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    for name, arr in (("input_ids", ids), ("labels", labels)):
        _check(path, table, arr.is_null().to_numpy(zero_copy_only=False), f"{name} is null")
        flat_nulls = pc.list_flatten(arr).null_count
        if flat_nulls:
            raise InputError(f"{path}: {name} holds {flat_nulls} null token(s)")
    n_tokens = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    n_labels = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
    _check(path, table, n_tokens == 0, "input_ids is empty")
    _check(path, table, n_tokens != n_labels, "input_ids and labels differ in length")
    if packed:
        seq = table.column(SEQ_LENGTHS).combine_chunks()
        _check(path, table, seq.is_null().to_numpy(zero_copy_only=False), "seq_lengths is null")
        _check(path, table, list_sums(seq) != n_tokens, "seq_lengths do not add up to the row's token count")
    return n_tokens, list_sums(labels, pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX))


def load_train_data(path: str | Path) -> TrainData:
    """Load and check the tokenized training file (InputError on any problem)."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tokenized training file not found")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    packed = SEQ_LENGTHS in names
    needed = PACKED_COLUMNS if packed else UNPACKED_COLUMNS
    missing = [c for c in needed if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    table = pq.read_table(path, columns=[*needed, *(c for c in ID_COLUMNS if c in names)])
    if table.num_rows == 0:
        raise InputError(f"{path}: no training rows")
    n_tokens, supervised = _validate(path, table, packed)
    return TrainData(
        dataset=Dataset(InMemoryTable(table.select(list(needed)))),
        packed=packed,
        rows=table.num_rows,
        tokens=int(n_tokens.sum()),
        supervised_tokens=int(supervised.sum()),
        rows_without_supervision=int((supervised == 0).sum()),
        max_row_tokens=int(n_tokens.max()),
    )
