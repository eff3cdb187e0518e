"""Open one configured source and stream its records as :class:`RawRow` s.

Supported: JSONL (``.jsonl``/``.ndjson``), JSON (an array, JSON lines, a pretty-printed
object wrapping one list of rows such as ``{"data": [...]}``, or pretty-printed row objects
one after another as ``jq`` writes them), Parquet, CSV/TSV, a folder
written by ``datasets`` ``save_to_disk`` (Dataset, or DatasetDict + ``split``) and
``hub:ORG/NAME[:CONFIG]`` (streamed with ``datasets.load_dataset``). Parquet and ZIP magic
bytes decide whatever the name; then a ``.csv``/``.tsv`` name; then the first character
(``[`` or ``{``: JSON, see :func:`is_document`); gzip/bzip2/xz compression and UTF-16/32 byte
order marks are recognised whatever the name (opening.py). Pipes and FIFOs are read once
into a temporary file first; devices are refused.

``RawRow.index`` (stored as ``source_row``) is the 0-based record index: the line
index for JSON lines (blank lines are not rows but do advance the index), the element
index for JSON arrays, the data row index (header excluded) for CSV, and the row index
for Parquet and ``datasets``. A source that cannot be read at all raises InputError.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO, Iterator

import orjson
import pyarrow as pa

from sft_pipeline.config import HUB_SCHEME
from sft_pipeline.errors import InputError, UnreadableSource
from sft_pipeline.ingest import reasons
from sft_pipeline.ingest.columnar import read_error, read_parquet, table_rows
from sft_pipeline.ingest.jsonarray import JsonArrayStream, WrapperError
from sft_pipeline.ingest.opening import SNIFF_BYTES, ZIP_MAGIC, Layout, open_utf8, readable_path, sniff_layout
from sft_pipeline.ingest.reasons import RawRow, RowReject, first_line

JSONL, JSON, PARQUET, CSV, TSV = "jsonl", "json", "parquet", "csv", "tsv"
SUFFIX_KINDS = {".jsonl": JSONL, ".ndjson": JSONL, ".json": JSON, ".parquet": PARQUET, ".pq": PARQUET,
                ".csv": CSV, ".tsv": TSV}
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
PARQUET_MAGIC = b"PAR1"
BOM = b"\xef\xbb\xbf"
SKIP_CHUNK = 1 << 20
TEXT_ENCODING = "utf-8-sig"  # strips a leading BOM
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException, UnicodeDecodeError)
DOCUMENT_LINE_ENDS = (b"{", b"[", b":", b",")  # a first line ending so opens a pretty-printed document


def open_text(path: Path, layout: Layout) -> IO[str]:
    """Text with a BOM stripped; undecodable bytes survive as surrogates (rejected per row later)."""
    return io.TextIOWrapper(open_utf8(path, layout), encoding=TEXT_ENCODING, errors="surrogateescape", newline="")


def name_kind(path: Path) -> str | None:
    """The kind a file's name announces, ignoring a compression suffix.

    >>> name_kind(Path("a.jsonl.gz")), name_kind(Path("b.CSV")), name_kind(Path("stdin"))
    ('jsonl', 'csv', None)
    """
    suffix = Path(path.stem).suffix if path.suffix in COMPRESSED_SUFFIXES else path.suffix
    return SUFFIX_KINDS.get(suffix.lower())


def is_document(head: bytes) -> bool:
    """Whether text starting with ``{`` is one pretty-printed JSON document rather than JSON lines:
    its first line does not parse and ends where a document's opening line does.

    >>> is_document(b'{\\n  "data": [\\n'), is_document(b'{"a": 1}\\n{"a": 2}\\n'), is_document(b'{"a": [1,')
    (True, False, False)
    """
    text = head.lstrip()
    if b"\n" not in text:
        return False
    first = text.split(b"\n", 1)[0].strip()
    try:
        orjson.loads(first)
        return False
    except orjson.JSONDecodeError:
        return first.endswith(DOCUMENT_LINE_ENDS)


def sniff_kind(path: Path, spec: str) -> tuple[str, Layout]:
    """The file kind (from its content, else its name) and how to open it."""
    kind, layout = name_kind(path), sniff_layout(path)
    head = layout.head.removeprefix(BOM)
    if not head.strip():
        raise UnreadableSource(f"{spec}: file is empty")
    if head.startswith(ZIP_MAGIC):
        raise UnreadableSource(f"{spec}: a ZIP archive (a spreadsheet or zipped folder?), not a data file: "
                               f"export or unzip it first")
    if head.startswith(PARQUET_MAGIC) or kind == PARQUET:
        if layout.compression:
            raise UnreadableSource(f"{spec}: compressed Parquet: decompress it first")
        return PARQUET, layout
    if b"\x00" in head and kind is not None:
        raise UnreadableSource(f"{spec}: binary data (NUL bytes), not {kind} text (UTF-16 needs a byte order mark)")
    if kind in (CSV, TSV):
        return kind, layout
    start = head.lstrip()[:1]
    if start == b"[" or (start == b"{" and is_document(head)):
        return JSON, layout
    if start == b"{" or kind == JSONL:
        return JSONL, layout
    if kind == JSON:
        raise UnreadableSource(f"{spec}: not a JSON array or JSON lines file (starts with {start!r})")
    raise UnreadableSource(f"{spec}: unsupported file type (expected .jsonl, .json, .parquet, .csv, .tsv "
                           f"or a datasets folder)")


def read_jsonl(fh: IO[bytes], max_row_bytes: int) -> Iterator[RawRow]:
    """One JSON value per line; bad lines become rejects, oversized lines are skipped unread."""
    for index, (line, complete) in enumerate(_lines(fh, max_row_bytes)):
        if not complete:
            msg = f"line longer than max_row_bytes={max_row_bytes}, skipped unparsed"
            yield RawRow(index, raw=line[:SNIFF_BYTES], reject=RowReject(reasons.ROW_TOO_LARGE, msg))
            continue
        line = line.removeprefix(BOM) if index == 0 else line
        if not line.strip():
            continue
        yield _parse_json_line(index, line)


def _lines(fh: IO[bytes], max_row_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """(line, True) for lines of at most ``max_row_bytes`` bytes; (its start, False) for a longer
    line, whose rest is consumed in chunks without being kept."""
    while line := fh.readline(max_row_bytes + 1):
        if len(line) > max_row_bytes and not line.endswith(b"\n"):
            while (part := fh.readline(SKIP_CHUNK)) and not part.endswith(b"\n"):
                pass
            yield line, False
        else:
            yield line, True


def _parse_json_line(index: int, line: bytes) -> RawRow:
    """Fast path orjson; on failure the stdlib parser decides (as for JSON arrays: NaN and lone
    surrogate escapes parse, and are judged later) and names the problem."""
    try:
        return RawRow(index, orjson.loads(line), raw=line)
    except orjson.JSONDecodeError:
        pass
    try:
        return RawRow(index, json.loads(line.decode("utf-8")), raw=line)
    except UnicodeDecodeError as bad:
        reject = RowReject(reasons.INVALID_UTF8, f"invalid UTF-8 byte at offset {bad.start}")
    except (json.JSONDecodeError, RecursionError) as err:
        reject = RowReject(reasons.INVALID_JSON, f"invalid JSON: {first_line(err)}")
    return RawRow(index, raw=line, reject=reject)


def read_json(path: Path, spec: str, kind: str, layout: Layout, max_row_bytes: int) -> Iterator[RawRow]:
    """JSON lines, a ``[...]`` array or a wrapper object around one (streamed element by element)."""
    if kind == JSONL:
        with open_utf8(path, layout) as fh:
            yield from read_jsonl(fh, max_row_bytes)
        return
    with open_text(path, layout) as fh:
        try:
            yield from JsonArrayStream(fh, max_row_bytes)
        except WrapperError as err:
            raise UnreadableSource(f"{spec}: {err}") from None


def read_csv(path: Path, spec: str, delimiter: str, layout: Layout, max_row_bytes: int) -> Iterator[RawRow]:
    """Rows as ``{header: value}``; a malformed record or wrong field count is a ``bad_csv_row``."""
    with open_text(path, layout) as fh, _csv_field_limit(max_row_bytes):
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except (csv.Error, StopIteration) as err:
            raise UnreadableSource(f"{spec}: cannot read the CSV header: {first_line(err)}") from None
        if len(set(header)) != len(header) or not all(header):
            raise UnreadableSource(f"{spec}: CSV header has empty or duplicate column names: {header[:10]}")
        index = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                msg = f"CSV line {reader.line_num}: {first_line(err)}"
                yield RawRow(index, raw="", reject=RowReject(reasons.BAD_CSV_ROW, msg))
                index += 1
                continue
            if not row:  # blank line
                continue
            if len(row) != len(header):
                msg = f"CSV line {reader.line_num}: {len(row)} fields, header has {len(header)}"
                yield RawRow(index, raw=delimiter.join(row), reject=RowReject(reasons.BAD_CSV_ROW, msg))
            else:
                yield RawRow(index, dict(zip(header, row)))
            index += 1


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def read_datasets_dir(path: Path, spec: str, split: str, batch_rows: int, max_row_bytes: int) -> Iterator[RawRow]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise InputError(f"{spec}: folder is not a dataset saved with datasets' save_to_disk "
                         f"(list data files as separate sources)") from None
    except (*READ_ERRORS, ValueError) as err:
        raise InputError(f"{spec}: cannot load the datasets folder: {first_line(err)}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{spec}: no split {split!r} (available: {', '.join(ds)})")
        ds = ds[split]
    yield from table_rows(ds.with_format("arrow").iter(batch_size=batch_rows), max_row_bytes)


def read_hub(spec: str, split: str) -> Iterator[RawRow]:
    """``hub:ORG/NAME`` or ``hub:ORG/NAME:CONFIG``, streamed (no full download)."""
    import datasets

    name, _, config = spec[len(HUB_SCHEME):].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    except Exception as err:  # network, auth, missing dataset/split/config: all one user error
        raise InputError(f"{spec}: cannot load split {split!r} from the hub: {first_line(err)}") from None
    for index, record in enumerate(ds):
        yield RawRow(index, record)


def read_source(spec: str, path: Path | None, *, split: str, max_row_bytes: int, batch_rows: int
                ) -> Iterator[RawRow]:
    """All records of one source; ``path`` is the resolved local path (None for hub ids)."""
    if spec.startswith(HUB_SCHEME):
        rows = read_hub(spec, split)
    elif path is None or not path.exists():
        raise InputError(f"{spec}: no such file or directory")
    elif path.is_dir():
        rows = read_datasets_dir(path, spec, split, batch_rows, max_row_bytes)
    else:
        rows = _read_file(path, spec, max_row_bytes, batch_rows)
    return _guarded(rows, spec)


def _read_file(path: Path, spec: str, max_row_bytes: int, batch_rows: int) -> Iterator[RawRow]:
    with readable_path(path, spec) as local:
        try:
            kind, layout = sniff_kind(local, spec)
        except READ_ERRORS as err:
            raise read_error(f"{spec}: cannot read", err) from None
        if kind == PARQUET:
            yield from read_parquet(local, spec, batch_rows, max_row_bytes)
        elif kind in (CSV, TSV):
            yield from read_csv(local, spec, "\t" if kind == TSV else ",", layout, max_row_bytes)
        else:
            yield from read_json(local, spec, kind, layout, max_row_bytes)


def _guarded(rows: Iterator[RawRow], spec: str) -> Iterator[RawRow]:
    """Turn an I/O or decoding failure in the middle of a source into a one-line InputError."""
    count = 0
    try:
        with closing(rows):
            for row in rows:
                count += 1
                yield row
    except READ_ERRORS as err:
        raise read_error(f"{spec}: read failed after {count} rows", err) from None
