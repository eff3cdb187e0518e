"""Stream the elements of a (possibly huge, possibly truncated) top-level JSON array.

``json.JSONDecoder.raw_decode`` parses one element at a time out of a bounded text
buffer that is refilled from the file. A small bracket/string scanner finds where a
broken element ends (the next ``,`` or ``]`` at depth 0), so one bad element becomes
one reject and parsing resumes after it; an element longer than ``max_row_chars`` is
skipped by the scanner without being held in memory; the unterminated tail of a cut
file becomes one ``truncated_json`` reject.

A top-level object is either a wrapper of rows, such as ``{"version": 1, "data": [...]}``
(its one list of objects, under a name that is not a row field such as ``messages``, is
streamed as the array of rows; its other members are dropped), or the first of a sequence
of objects that are rows themselves (``jq``'s pretty-printed output). A wrapper with a
second list of objects, or a damaged object in such a sequence, is a :class:`WrapperError`: one line
for the whole file, since the rows it would hold cannot be counted.
"""

from __future__ import annotations

import json
import re
from typing import Iterator, TextIO

from sft_pipeline.ingest import reasons
from sft_pipeline.ingest.formats import ROW_FIELDS
from sft_pipeline.ingest.reasons import RawRow, RowReject

CHUNK_CHARS = 1 << 20
_SPECIAL = re.compile(r'["\\\[\]{},]')
_WS = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()


class WrapperError(ValueError):
    """A top-level JSON object that does not wrap exactly one list of rows."""


class SeparatorScanner:
    """Find the end of one array element: the first ``,`` or ``]`` outside strings at depth 0.

    Fed chunk by chunk; keeps its string/escape/depth state between chunks.

    >>> SeparatorScanner().feed('{"a": [1, "],"]} , 2')
    17
    >>> s = SeparatorScanner(); s.feed('{"a": "x\\\\'), s.feed('"", 3}]')
    (None, 6)
    """

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the previous chunk ended with a backslash inside a string

    def feed(self, text: str, start: int = 0) -> int | None:
        skip = start if self.escaped else -1
        self.escaped = False
        for match in _SPECIAL.finditer(text, start):
            i = match.start()
            if i == skip:
                continue
            c = text[i]
            if self.in_string:
                if c == "\\":
                    skip = i + 1
                    self.escaped = skip == len(text)
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "[{":
                self.depth += 1
            elif c in "]}":
                if self.depth == 0:
                    return i
                self.depth -= 1
            elif self.depth == 0:  # a comma
                return i
        return None


class JsonArrayStream:
    """Iterate :class:`RawRow` s over the elements of the JSON array read from ``fh``."""

    def __init__(self, fh: TextIO, max_row_chars: int, chunk_chars: int = CHUNK_CHARS):
        self.fh = fh
        self.max_row_chars = max_row_chars
        self.chunk_chars = chunk_chars
        self.buf = ""
        self.pos = 0
        self.eof = False

    def _fill(self, size: int | None = None) -> bool:
        """Append more text (dropping what was consumed); False at end of file."""
        data = "" if self.eof else self.fh.read(max(size or 0, self.chunk_chars))
        self.eof = not data
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return bool(data)

    def _peek(self) -> str:
        """The next non-whitespace character ("" at end of file), without consuming it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos:self.pos + 1]

    def __iter__(self) -> Iterator[RawRow]:
        first = self._peek()
        if first == "[":
            index = yield from self._array(0)
        elif first == "{":
            index = yield from self._objects()
        else:
            raise ValueError("not a JSON array")
        if self._peek():
            tail = self.buf[self.pos:self.pos + self.max_row_chars]
            reject = RowReject(reasons.INVALID_JSON, "data after the end of the JSON document")
            yield RawRow(index, raw=tail, reject=reject)

    def _array(self, index: int) -> Iterator[RawRow]:
        """The elements of the array opening at ``self.pos``; returns the next row index."""
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
            return index
        comma = True
        while self._peek():  # the file may end right after a comma: nothing was lost
            row = self._element(index)
            if not comma and row.reject is None:
                row = row._replace(reject=RowReject(reasons.INVALID_JSON, "invalid JSON: missing ',' before element"))
            yield row
            index += 1
            nxt = self._peek()
            comma = nxt == ","
            if comma or nxt == "]":
                self.pos += 1
            if nxt == "]" or not nxt:  # closed, or the file ends after a complete element
                break
        return index

    def _objects(self) -> Iterator[RawRow]:
        """A wrapper's rows, or each object of a sequence as one row; returns the next row index."""
        index = 0
        while self._peek() == "{":
            record, index = yield from self._object(index)
            if record is None:  # a wrapper: its rows were streamed
                break
            yield RawRow(index, record)
            index += 1
        return index

    def _object(self, index: int) -> Iterator[RawRow]:
        """Parse the object at ``self.pos``. Returns (None, next index) when it wrapped rows, which
        were streamed, or (the object, index) when it is a row itself."""
        self.pos += 1
        members, rows_key = {}, None
        while (nxt := self._peek()) and nxt != "}":
            if nxt == ",":
                self.pos += 1
                continue
            key = self._member_value("a member name")
            if not isinstance(key, str) or self._peek() != ":":
                raise WrapperError("a JSON object whose members are not \"name\": value")
            self.pos += 1
            is_list = self._peek() == "["
            if is_list and rows_key is None and index == 0 and key not in ROW_FIELDS and self._rows_follow():
                rows_key = key
                index = yield from self._array(index)
            elif is_list and rows_key is not None and self._rows_follow():
                raise WrapperError(f"a JSON object with more than one list of objects ({rows_key!r}, {key!r}): "
                                   f"which holds the rows? keep one")
            else:
                members[key] = self._member_value(f"member {key!r}")
        self.pos += 1 if nxt else 0
        return (None if rows_key is not None else members), index

    def _rows_follow(self) -> bool:
        """Whether a list of objects (or an empty list) starts at the next character."""
        if self._peek() != "[":
            return False
        while True:
            after = _WS.match(self.buf, self.pos + 1).end()
            if after < len(self.buf) or not self._fill():
                return self.buf[after:after + 1] in ("{", "]")

    def _member_value(self, what: str) -> object:
        """Parse and return one non-row value of the wrapper (a name or another member's value)."""
        row = self._element(-1)
        if row.reject is not None:
            raise WrapperError(f"{what}: {row.reject.message}")
        return row.record

    def _element(self, index: int) -> RawRow:
        """Parse one element at ``self.pos``, refilling the buffer as needed."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
                if end - self.pos > self.max_row_chars:
                    return self._too_large(index, self.buf[self.pos:self.pos + self.chunk_chars], end)
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return RawRow(index, value)
            except (json.JSONDecodeError, RecursionError) as err:
                sep = SeparatorScanner().feed(self.buf, self.pos)
                if sep is not None:
                    why = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                    return self._broken(index, sep, reasons.INVALID_JSON, f"invalid JSON: {why}")
                if self.eof:
                    msg = "file ends inside this element (truncated JSON)"
                    return self._broken(index, len(self.buf), reasons.TRUNCATED_JSON, msg)
            if len(self.buf) - self.pos > self.max_row_chars:
                return self._skip_large(index)
            self._fill(len(self.buf) - self.pos)

    def _broken(self, index: int, end: int, reason: str, message: str) -> RawRow:
        raw = self.buf[self.pos:end]
        self.pos = end
        return RawRow(index, raw=raw, reject=RowReject(reason, message))

    def _skip_large(self, index: int) -> RawRow:
        """Scan past an oversized element without keeping it in memory."""
        raw = self.buf[self.pos:self.pos + self.chunk_chars]
        scanner = SeparatorScanner()
        end = scanner.feed(self.buf, self.pos)
        while end is None:
            self.pos = len(self.buf)
            if not self._fill():
                msg = "file ends inside an oversized element (truncated JSON)"
                return RawRow(index, raw=raw, reject=RowReject(reasons.TRUNCATED_JSON, msg))
            end = scanner.feed(self.buf, 0)
        return self._too_large(index, raw, end)

    def _too_large(self, index: int, raw: str, end: int) -> RawRow:
        self.pos = end
        msg = f"element longer than max_row_bytes={self.max_row_chars} characters"
        return RawRow(index, raw=raw, reject=RowReject(reasons.ROW_TOO_LARGE, msg))
