"""Padding-free packing: TRL's best-fit-decreasing ``pack_dataset``, plus row ids and position ids.

Rows are already at most ``max_length`` long, so BFD keeps every token of every row;
each packed row lists the ids of its sequences, their lengths (``seq_lengths``, which
TRL's collator reads with ``padding_free=True``) and ``position_ids`` restarting at 0
per sequence.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TOKEN_TYPE = pa.int32()
TOKEN_LIST = pa.list_(TOKEN_TYPE)
ROW_COLUMN = "_row"  # per-token source row index, carried through packing to recover row ids


def list_array(rows: Sequence[Sequence[int]]) -> pa.ListArray:
    """A list<int32> array from Python lists (pyarrow converts them in C++).

    >>> list_array([[1, 2], [3]]).to_pylist()
    [[1, 2], [3]]
    """
    return pa.array(rows, type=TOKEN_LIST)


def position_ids(seq_lengths: pa.ListArray) -> pa.ListArray:
    """Positions restarting at 0 for each packed sequence.

    >>> position_ids(pa.array([[3, 1], [2]], type=TOKEN_LIST)).to_pylist()
    [[0, 1, 2, 0], [0, 1]]
    """
    lengths = seq_lengths.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = (np.arange(int(lengths.sum()), dtype=np.int64) - starts).astype(np.int32)
    seq_offsets = seq_lengths.offsets.to_numpy()
    token_offsets = np.concatenate([[0], np.cumsum(lengths)])[seq_offsets - seq_offsets[0]]
    return pa.ListArray.from_arrays(pa.array(token_offsets.astype(np.int32)), pa.array(positions))


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def pack_rows(ids: Sequence[str], input_ids: pa.ListArray, labels: pa.ListArray, max_length: int) -> pa.Table:
    """Packed table: ``ids``, ``input_ids``, ``labels``, ``position_ids``, ``seq_lengths``."""
    import datasets
    from trl import pack_dataset

    lengths = pc.list_value_length(input_ids).to_numpy(zero_copy_only=False)
    if not len(lengths):  # TRL's packing needs a row
        empty = list_array([])
        return pa.table({"ids": pa.array([], pa.list_(pa.string())), "input_ids": empty, "labels": empty,
                         "position_ids": empty, "seq_lengths": empty})
    if lengths.max() > max_length:
        raise ValueError(f"pack_rows: a row of {lengths.max()} tokens exceeds max_length {max_length}")
    rows = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    row_col = pa.ListArray.from_arrays(input_ids.offsets, pa.array(rows))
    table = pa.table({"input_ids": input_ids, "labels": labels, ROW_COLUMN: row_col})
    with _quiet_datasets():
        packed = pack_dataset(datasets.Dataset(table), max_length, strategy="bfd",
                              map_kwargs={"batch_size": max(len(table), 1)})
    packed = packed.data.table
    seq_lengths = packed.column("seq_lengths").combine_chunks().cast(TOKEN_LIST)
    row_col = packed.column(ROW_COLUMN).combine_chunks()
    seq_starts = np.cumsum(np.concatenate([[0], seq_lengths.flatten().to_numpy()[:-1]])).astype(np.int64)
    first_rows = row_col.flatten().to_numpy()[seq_starts] if len(seq_starts) else np.array([], np.int32)
    id_values = pa.array([ids[r] for r in first_rows], type=pa.string())
    ids_col = pa.ListArray.from_arrays(seq_lengths.offsets, id_values)
    return pa.table({
        "ids": ids_col,
        "input_ids": packed.column("input_ids").combine_chunks().cast(TOKEN_LIST),
        "labels": packed.column("labels").combine_chunks().cast(TOKEN_LIST),
        "position_ids": position_ids(seq_lengths),
        "seq_lengths": seq_lengths,
    })


def packing_efficiency(packed: pa.Table, max_length: int) -> float:
    """Real tokens over the capacity of the packed rows (rows x max_length)."""
    if packed.num_rows == 0:
        return 0.0
    tokens = int(pc.sum(pc.list_value_length(packed.column("input_ids"))).as_py())
    return tokens / (packed.num_rows * max_length)
