"""Rows out of Arrow data (Parquet files, ``datasets`` folders), accounting for every row.

* A row whose variable-width data (strings, binaries, nested lists of them) exceeds
  ``max_row_bytes`` is a ``row_too_large`` reject, measured on the Arrow buffers: its cells
  never become Python objects.
* A row that cannot become Python values (invalid UTF-8 in a string column, ...) is one
  reject naming the column; the other rows of its batch are read as usual.
* A Parquet row group that cannot be decoded (a corrupt page) makes each of its rows not
  yet read a ``corrupt_data`` reject: the footer says how many there are, so none is lost.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sft_pipeline.errors import InputError, UnreadableSource
from sft_pipeline.ingest import reasons
from sft_pipeline.ingest.reasons import RawRow, RowReject, first_line

READ_ERRORS = (OSError, EOFError, pa.ArrowException)
CONVERT_ERRORS = (UnicodeDecodeError, ValueError, OverflowError, pa.ArrowException)


def damaged_content(err: BaseException) -> bool:
    """Whether a read error is damage in the bytes themselves (a cut compressed stream, an undecodable
    Parquet footer), not the I/O that read them (which may pass on a retry).

    >>> damaged_content(EOFError("Compressed file ended")), damaged_content(OSError(5, "EIO"))
    (True, False)
    """
    if isinstance(err, (EOFError, gzip.BadGzipFile)):
        return True
    return isinstance(err, pa.ArrowException) and not isinstance(err, OSError)


def read_error(message: str, err: BaseException) -> InputError:
    """``message: <first line of err>`` as an UnreadableSource when the bytes are damaged, else an InputError."""
    return (UnreadableSource if damaged_content(err) else InputError)(f"{message}: {first_line(err)}")


def value_sizes(arr: pa.Array) -> np.ndarray:
    """Bytes of variable-width data per row (fixed-width values count their width; nulls 0).

    >>> value_sizes(pa.array(["ab", None, "cde"])).tolist()
    [2.0, 0.0, 3.0]
    >>> value_sizes(pa.array([[{"c": "xy"}, {"c": "z"}], [], None])).tolist()
    [3.0, 0.0, 0.0]
    """
    kind = arr.type
    if pa.types.is_dictionary(kind):
        return value_sizes(arr.dictionary_decode())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(float)
    if pa.types.is_struct(kind):
        return sum((value_sizes(child) for child in arr.flatten()), np.zeros(len(arr)))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=value_sizes(pc.list_flatten(arr)), minlength=len(arr))
    width = getattr(kind, "bit_width", 0) if pa.types.is_primitive(kind) else 0
    return np.full(len(arr), max(width, 8) // 8, dtype=float)


def oversized_rows(batch: pa.RecordBatch, max_row_bytes: int) -> dict[int, RowReject]:
    """Rows of ``batch`` bigger than ``max_row_bytes``, each with its reject (largest column named)."""
    if batch.nbytes <= max_row_bytes:  # no row can be bigger than the whole batch
        return {}
    per_column = np.stack([value_sizes(col) for col in batch.columns])
    totals = per_column.sum(axis=0)
    out = {}
    for i in np.flatnonzero(totals > max_row_bytes).tolist():
        column = batch.schema.names[int(per_column[:, i].argmax())]
        msg = f"row of {int(totals[i])} bytes (column {column!r}), more than max_row_bytes={max_row_bytes}"
        out[i] = RowReject(reasons.ROW_TOO_LARGE, msg + ", skipped unread")
    return out


def batch_rows(batch: pa.RecordBatch, start: int, max_row_bytes: int) -> Iterator[RawRow]:
    """The rows of one batch as :class:`RawRow` s indexed from ``start``."""
    big = oversized_rows(batch, max_row_bytes)
    keep = batch if not big else batch.filter(pa.array([i not in big for i in range(batch.num_rows)]))
    try:
        records = iter(keep.to_pylist())
    except CONVERT_ERRORS:
        records = (_convert_one(keep, i) for i in range(keep.num_rows))
    for i in range(batch.num_rows):
        if i in big:
            yield RawRow(start + i, raw="", reject=big[i])
            continue
        record = next(records)
        yield RawRow(start + i, raw="", reject=record) if isinstance(record, RowReject) else RawRow(start + i, record)


def _convert_one(batch: pa.RecordBatch, i: int) -> dict | RowReject:
    """One row as a dict, or the reject naming the first column that cannot be converted."""
    row = batch.slice(i, 1)
    try:
        return row.to_pylist()[0]
    except CONVERT_ERRORS:
        pass
    for name, column in zip(batch.schema.names, row.columns):
        try:
            column.to_pylist()
        except UnicodeDecodeError as err:
            return RowReject(reasons.INVALID_UTF8, f"invalid UTF-8 in column {name!r} at byte {err.start}")
        except CONVERT_ERRORS as err:
            return RowReject(reasons.CORRUPT_DATA, f"column {name!r} cannot be read: {first_line(err)}")
    return RowReject(reasons.CORRUPT_DATA, "row cannot be read")


def read_parquet(path: Path, spec: str, batch_size: int, max_row_bytes: int) -> Iterator[RawRow]:
    """Row group by row group; a group that fails to decode rejects its remaining rows."""
    try:
        pf = pq.ParquetFile(path)
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except READ_ERRORS as err:
        raise read_error(f"{spec}: not a readable Parquet file", err) from None
    start = 0
    for group, rows in enumerate(groups):
        yield from _group_rows(pf, group, range(start, start + rows), batch_size, max_row_bytes)
        start += rows


def _group_rows(pf: pq.ParquetFile, group: int, indices: range, batch_size: int, max_row_bytes: int
                ) -> Iterator[RawRow]:
    batches = pf.iter_batches(batch_size=batch_size, row_groups=[group])
    index = indices.start
    while True:
        try:
            batch = next(batches, None)
        except READ_ERRORS as err:
            reject = RowReject(reasons.CORRUPT_DATA, f"row group {group} cannot be decoded: {first_line(err)}")
            yield from (RawRow(i, raw="", reject=reject) for i in range(index, indices.stop))
            return
        if batch is None:
            return
        yield from batch_rows(batch, index, max_row_bytes)
        index += batch.num_rows


def table_rows(tables: Iterable[pa.RecordBatch | pa.Table], max_row_bytes: int) -> Iterator[RawRow]:
    """Rows of a stream of Arrow tables or batches (``datasets`` folders)."""
    index = 0
    for table in tables:
        for batch in table.to_batches() if isinstance(table, pa.Table) else [table]:
            yield from batch_rows(batch, index, max_row_bytes)
            index += batch.num_rows
