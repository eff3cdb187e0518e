"""Row formats -> canonical messages.

Supported formats (detected per row, or forced with ``SourceConfig.format``):

* ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system`` and
  ``history`` (a list of ``[user, assistant]`` pairs, as in LLaMA-Factory).
* ``sharegpt``: ``conversations`` = list of ``{"from", "value"}`` (``human``/``gpt``/``system``
  and common aliases; ``role``/``content`` keys also accepted), optional top-level ``system``.
* ``messages``: OpenAI ``messages`` = list of ``{"role", "content"}``; content may be a
  string or a list of ``{"type": "text", "text": ...}`` parts.
* ``prompt_completion``: ``prompt`` and ``completion``, each a plain string (user /
  assistant) or a conversational list of messages (TRL style).

List-valued fields stored as JSON text (CSV, string columns) are parsed. Null fields count
as absent (columnar files null out the columns a row lacks). Row fields a format does not
use are kept as the row's metadata; extra keys inside messages (``name``, ``weight``, ...)
are not kept.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import orjson

from sft_pipeline.constants import ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_USER
from sft_pipeline.ingest import reasons
from sft_pipeline.ingest.reasons import RowReject

Message = dict[str, str]

FORMAT_AUTO = "auto"
ALPACA = "alpaca"
SHAREGPT = "sharegpt"
MESSAGES = "messages"
PROMPT_COMPLETION = "prompt_completion"
FORMATS = (ALPACA, SHAREGPT, MESSAGES, PROMPT_COMPLETION)

# Canonical field names a SourceConfig.field_map may map from other column / key names.
ROW_FIELDS = ("instruction", "input", "output", "system", "history", "conversations", "messages",
              "prompt", "completion")
MESSAGE_FIELDS = ("role", "content")
FIELD_NAMES = ROW_FIELDS + MESSAGE_FIELDS

ROLE_ALIASES = {
    "system": ROLE_SYSTEM, "developer": ROLE_SYSTEM,
    "user": ROLE_USER, "human": ROLE_USER, "prompter": ROLE_USER,
    "assistant": ROLE_ASSISTANT, "gpt": ROLE_ASSISTANT, "chatgpt": ROLE_ASSISTANT, "bing": ROLE_ASSISTANT,
    "bard": ROLE_ASSISTANT, "model": ROLE_ASSISTANT,
}
TEXT_PART = "text"
ID_HEX_CHARS = 32


def conversation_id(messages: list[Message]) -> str:
    """Stable content hash of canonical messages (same conversation -> same id, wherever it came from).

    >>> conversation_id([{"role": "user", "content": "hi"}]) == conversation_id([{"content": "hi", "role": "user"}])
    True
    >>> len(conversation_id([]))
    32
    """
    payload = orjson.dumps([[m["role"], m["content"]] for m in messages])
    return hashlib.sha256(payload).hexdigest()[:ID_HEX_CHARS]


def normalize_role(value: Any, where: str) -> str:
    """Map a role name onto system/user/assistant; unknown names pass through (validation rejects them).

    >>> normalize_role("GPT", "m0"), normalize_role("human", "m1"), normalize_role("tool", "m2")
    ('assistant', 'user', 'tool')
    """
    if not isinstance(value, str):
        raise RowReject(reasons.WRONG_TYPE, f"{where} role is {type(value).__name__}, expected a string")
    return ROLE_ALIASES.get(value.strip().lower(), value)


def apply_field_map(record: dict, field_map: Mapping[str, str]) -> dict:
    """Rename mapped row columns to their canonical names (the mapped column wins a clash).

    >>> apply_field_map({"q": "x", "a": "y", "id": 1}, {"instruction": "q", "output": "a"})
    {'id': 1, 'instruction': 'x', 'output': 'y'}
    """
    if not field_map:
        return record
    sources = {col: canon for canon, col in field_map.items() if canon in ROW_FIELDS}
    out = {k: v for k, v in record.items() if k not in sources}
    out.update({canon: record[col] for col, canon in sources.items() if col in record})
    return out


def detect_format(record: Mapping[str, Any]) -> str:
    """The format a row's fields indicate (null fields, as in columnar files, count as absent).

    >>> detect_format({"instruction": "i", "output": "o"}), detect_format({"messages": None, "conversations": []})
    ('alpaca', 'sharegpt')
    """
    if record.get(MESSAGES) is not None:
        return MESSAGES
    if record.get("conversations") is not None:
        return SHAREGPT
    if record.get("instruction") is not None:
        return ALPACA
    if record.get("prompt") is not None or record.get("completion") is not None:
        return PROMPT_COMPLETION
    fields = ", ".join(sorted(map(str, record))[:8]) or "none"
    raise RowReject(reasons.UNKNOWN_FORMAT, f"no alpaca/sharegpt/messages/prompt_completion fields (fields: {fields})")


class MessageKeys:
    """Key names tried, in order, for a message's role and content."""

    def __init__(self, field_map: Mapping[str, str] | None = None):
        field_map = field_map or {}
        self.role = tuple(dict.fromkeys([field_map.get("role", "role"), "role", "from"]))
        self.content = tuple(dict.fromkeys([field_map.get("content", "content"), "content", "value"]))


def _require(record: Mapping[str, Any], field: str) -> Any:
    if record.get(field) is None:
        raise RowReject(reasons.MISSING_FIELD, f"missing field {field!r}")
    return record[field]


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        kinds = {p.get("type") for p in value}
        if kinds <= {TEXT_PART} and all(isinstance(p.get(TEXT_PART), str) for p in value):
            return "\n".join(p[TEXT_PART] for p in value)
    raise RowReject(reasons.WRONG_TYPE, f"{where} is {type(value).__name__}, expected a string")


def _as_list(value: Any, where: str) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise RowReject(reasons.WRONG_TYPE, f"{where} is a string that is not a JSON list") from None
        if isinstance(parsed, list):
            return parsed
    raise RowReject(reasons.WRONG_TYPE, f"{where} is {type(value).__name__}, expected a list of messages")


def _pick(item: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in item:
            return item[key]
    return None


def turns(value: Any, where: str, role_keys: tuple[str, ...], content_keys: tuple[str, ...]) -> list[Message]:
    """A list of message objects -> canonical messages (roles normalised, contents checked).

    >>> turns([{"from": "human", "value": "q"}], "conversations", ("role", "from"), ("content", "value"))
    [{'role': 'user', 'content': 'q'}]
    """
    out = []
    for i, item in enumerate(_as_list(value, where)):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise RowReject(reasons.WRONG_TYPE, f"{at} is {type(item).__name__}, expected an object")
        role, content = _pick(item, role_keys), _pick(item, content_keys)
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise RowReject(reasons.MISSING_FIELD, f"{at} has no {missing} (keys: {', '.join(map(str, item))})")
        out.append({"role": normalize_role(role, at), "content": _text(content, f"{at} content")})
    return out


def _optional_text(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    return "" if value is None else _text(value, field)


def alpaca_messages(record: Mapping[str, Any], keys: MessageKeys) -> list[Message]:
    """Instruction (+ input) -> user, output -> assistant; optional system and history first.

    >>> alpaca_messages({"instruction": "Add", "input": "1+1", "output": "2"}, MessageKeys())
    [{'role': 'user', 'content': 'Add\\n\\n1+1'}, {'role': 'assistant', 'content': '2'}]
    """
    instruction = _text(_require(record, "instruction"), "instruction")
    output = _text(_require(record, "output"), "output")
    extra = _optional_text(record, "input")
    messages = [{"role": ROLE_SYSTEM, "content": s} for s in [_optional_text(record, "system")] if s]
    for i, pair in enumerate(_as_list(record["history"], "history") if record.get("history") else []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowReject(reasons.WRONG_TYPE, f"history[{i}] is not a [user, assistant] pair")
        messages += [{"role": ROLE_USER, "content": _text(pair[0], f"history[{i}][0]")},
                     {"role": ROLE_ASSISTANT, "content": _text(pair[1], f"history[{i}][1]")}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return messages + [{"role": ROLE_USER, "content": user}, {"role": ROLE_ASSISTANT, "content": output}]


def sharegpt_messages(record: Mapping[str, Any], keys: MessageKeys) -> list[Message]:
    messages = turns(_require(record, "conversations"), "conversations", keys.role, keys.content)
    system = _optional_text(record, "system")
    if system and not (messages and messages[0]["role"] == ROLE_SYSTEM):
        messages.insert(0, {"role": ROLE_SYSTEM, "content": system})
    return messages


def openai_messages(record: Mapping[str, Any], keys: MessageKeys) -> list[Message]:
    return turns(_require(record, MESSAGES), MESSAGES, keys.role, keys.content)


def prompt_completion_messages(record: Mapping[str, Any], keys: MessageKeys) -> list[Message]:
    """Plain strings -> one user and one assistant message; lists -> their messages.

    >>> prompt_completion_messages({"prompt": "2+2?", "completion": "4"}, MessageKeys())
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
    """
    out = []
    for field, role in (("prompt", ROLE_USER), ("completion", ROLE_ASSISTANT)):
        value = _require(record, field)
        if isinstance(value, str):
            out.append({"role": role, "content": value})
        else:
            out += turns(value, field, keys.role, keys.content)
    return out


CONVERTERS = {
    ALPACA: (alpaca_messages, ("instruction", "input", "output", "system", "history")),
    SHAREGPT: (sharegpt_messages, ("conversations", "system")),
    MESSAGES: (openai_messages, (MESSAGES,)),
    PROMPT_COMPLETION: (prompt_completion_messages, ("prompt", "completion")),
}


def to_messages(record: Any, fmt: str, keys: MessageKeys) -> tuple[str, list[Message], dict]:
    """Convert one row: returns (format, canonical messages, metadata = the unused non-null fields).

    >>> to_messages({"id": 7, "messages": [{"role": "user", "content": "q"}]}, "auto", MessageKeys())
    ('messages', [{'role': 'user', 'content': 'q'}], {'id': 7})
    """
    if not isinstance(record, dict):
        raise RowReject(reasons.NOT_AN_OBJECT, f"row is a {type(record).__name__}, expected an object")
    fmt = detect_format(record) if fmt == FORMAT_AUTO else fmt
    convert, used = CONVERTERS[fmt]
    messages = convert(record, keys)
    return fmt, messages, {k: v for k, v in record.items() if k not in used and v is not None}


DROPPED_LEADING_ASSISTANT_KEY = "_dropped_leading_assistant"


def drop_leading_assistant(messages: list[Message]) -> tuple[list[Message], str | None]:
    """Remove an assistant message that comes before any user message; return it too.

    >>> drop_leading_assistant([{"role": "assistant", "content": "...end."}, {"role": "user", "content": "q"}])
    ([{'role': 'user', 'content': 'q'}], '...end.')
    >>> drop_leading_assistant([{"role": "user", "content": "q"}])
    ([{'role': 'user', 'content': 'q'}], None)
    """
    first = 1 if messages and messages[0]["role"] == ROLE_SYSTEM else 0
    if len(messages) > first and messages[first]["role"] == ROLE_ASSISTANT:
        return messages[:first] + messages[first + 1:], messages[first]["content"]
    return messages, None


def metadata_json(metadata: Mapping[str, Any]) -> str:
    """The unused fields as a JSON string (non-JSON values are stringified).

    >>> metadata_json({"id": "x", "n": 1})
    '{"id":"x","n":1}'
    """
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    try:
        return orjson.dumps(metadata, default=str, option=option).decode()
    except (TypeError, orjson.JSONEncodeError):  # lone surrogates, huge ints, ...: escape everything
        return json.dumps(metadata, default=str, ensure_ascii=True)
