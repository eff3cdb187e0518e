"""Arrow schemas of the ingest outputs and a batched, streaming Parquet writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

# conversations.parquet: one accepted conversation per row.
CONVERSATIONS_SCHEMA = pa.schema([
    ("id", pa.string()),  # content hash of the canonical messages (formats.conversation_id)
    ("source", pa.string()),  # the source path as configured
    ("source_index", pa.int32()),  # its position in ingest.sources (the index a source's weight is known by)
    ("source_row", pa.int64()),  # 0-based record index in the source (readers.py)
    ("format", pa.string()),  # alpaca | sharegpt | messages | prompt_completion
    ("messages", pa.list_(MESSAGE_TYPE)),
    ("metadata", pa.string()),  # JSON object of the row's other fields
])

# rejects.parquet: one rejected row per row.
REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("source_row", pa.int64()),
    ("reason", pa.string()),  # a code from reasons.py
    ("message", pa.string()),  # one human-readable line
    ("raw", pa.string()),  # the row's text, truncated to RAW_EXCERPT_CHARS
])

RAW_EXCERPT_CHARS = 500


def excerpt(raw: Any, limit: int = RAW_EXCERPT_CHARS) -> str:
    """A short, always-valid text excerpt of a raw row.

    >>> excerpt(b'{"a": "\\xff"}')
    '{"a": "\\ufffd"}'
    >>> len(excerpt("x" * 10_000)) <= RAW_EXCERPT_CHARS + 20
    True
    """
    if isinstance(raw, (bytes, bytearray)):
        text = bytes(raw[: limit * 4]).decode("utf-8", errors="replace")
    else:
        text = str(raw)[: limit * 4].encode("utf-8", errors="replace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]}...[truncated]"


def encodable(value: Any) -> Any:
    """``value`` with every string made valid UTF-8 (lone surrogates become ``\\udXXX`` escapes).

    >>> encodable({"k\\ud800": ["ok", "\\udcff"]})
    {'k\\\\ud800': ['ok', '\\\\udcff']}
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encodable(v) for v in value]
    return value


class BatchWriter:
    """Buffer rows as columns and write one Parquet row group every ``batch_rows`` rows."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int):
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows_written = 0
        self._columns: dict[str, list] = {name: [] for name in schema.names}
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def append(self, **row: Any) -> None:
        for name, column in self._columns.items():
            column.append(row[name])
        if len(self._columns[self.schema.names[0]]) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        n = len(self._columns[self.schema.names[0]])
        if not n:
            return
        try:
            table = pa.Table.from_pydict(self._columns, schema=self.schema)
        except UnicodeEncodeError:  # a lone surrogate in a name or message: escape, never lose the row
            table = pa.Table.from_pydict(encodable(self._columns), schema=self.schema)
        self._writer.write_table(table)
        self.rows_written += n
        self._columns = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
