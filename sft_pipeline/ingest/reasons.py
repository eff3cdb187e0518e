"""Raw rows as readers yield them, and reject reasons: short stable codes stored in
``rejects.parquet`` (column ``reason``)."""

from __future__ import annotations

from typing import Any, NamedTuple

# Reading / parsing a row.
INVALID_JSON = "invalid_json"  # a JSONL line or JSON array element that does not parse
TRUNCATED_JSON = "truncated_json"  # the unterminated tail of a JSON array (file cut mid-record)
INVALID_UTF8 = "invalid_utf8"  # bytes that are not UTF-8, or lone surrogates in text
NOT_AN_OBJECT = "not_an_object"  # a row that is not a JSON object / mapping
BAD_CSV_ROW = "bad_csv_row"  # a CSV record with the wrong number of fields or a syntax error
ROW_TOO_LARGE = "row_too_large"  # raw row bigger than ``max_row_bytes``, skipped unparsed
CORRUPT_DATA = "corrupt_data"  # a row in a part of a file that cannot be decoded (e.g. a corrupt Parquet page)
UNREADABLE_SOURCE = "unreadable_source"  # the rest of a file that cannot be read (binary, ZIP, bad footer), one row

# Mapping a row onto a known format.
UNKNOWN_FORMAT = "unknown_format"  # no known format's fields present
MISSING_FIELD = "missing_field"  # a field the (forced or detected) format needs is absent
WRONG_TYPE = "wrong_type"  # a field has the wrong type (e.g. content is a number)

# Validating the canonical conversation.
UNKNOWN_ROLE = "unknown_role"
MISPLACED_SYSTEM = "misplaced_system"  # a system message that is not the first message
BAD_TURN_ORDER = "bad_turn_order"  # user/assistant do not alternate starting with user
NO_ASSISTANT = "no_assistant"  # no assistant turn at all
EMPTY_USER = "empty_user"  # a user message that shows nothing (blank, or only zero-width/format characters)
EMPTY_ASSISTANT = "empty_assistant"  # an assistant message that shows nothing
TOO_LONG = "too_long"  # more than ``max_chars`` characters in total
TOO_MANY_TURNS = "too_many_turns"  # more than ``max_turns`` messages

REASONS = (
    INVALID_JSON, TRUNCATED_JSON, INVALID_UTF8, NOT_AN_OBJECT, BAD_CSV_ROW, ROW_TOO_LARGE, CORRUPT_DATA,
    UNREADABLE_SOURCE,
    UNKNOWN_FORMAT, MISSING_FIELD, WRONG_TYPE,
    UNKNOWN_ROLE, MISPLACED_SYSTEM, BAD_TURN_ORDER, NO_ASSISTANT, EMPTY_USER, EMPTY_ASSISTANT,
    TOO_LONG, TOO_MANY_TURNS,
)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (never empty).

    >>> first_line(ValueError("bad thing\\nmore detail"))
    'bad thing'
    """
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RowReject(Exception):
    """One row cannot be used: ``reason`` is a code above, ``message`` one human line."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class RawRow(NamedTuple):
    """One record of a source: its 0-based index, the parsed value (or a reject), and raw text.

    ``raw`` is the row's original text/bytes when the reader has it cheaply (else None and
    the record itself is shown in rejects).
    """

    index: int
    record: Any = None
    raw: Any = None
    reject: RowReject | None = None
