"""Checks on a canonical conversation (a list of ``{"role", "content"}`` dicts).

Each check raises :class:`RowReject` with a reason code; a conversation that passes
is ready for chat templating: an optional leading system message, then user and
assistant turns alternating from a user turn, with at least one assistant reply.
"""

from __future__ import annotations

import unicodedata

from sft_pipeline.constants import ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_USER, ROLES
from sft_pipeline.ingest import reasons
from sft_pipeline.ingest.reasons import RowReject

Message = dict[str, str]
# What renders as nothing: controls, format characters (zero-width space and joiners, word joiner, BOM,
# soft hyphen) and space separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace, controls and invisible format characters.

    ``str.strip`` alone keeps zero-width and format characters, so such an answer looked non-empty.

    >>> is_blank(" \\u200b\\u2060\\ufeff\\u00ad\\u200c\\u200d\\n"), is_blank("\\x00\\t"), is_blank("a\\u200b"), is_blank("")
    (True, True, False, True)
    """
    return all(unicodedata.category(char) in INVISIBLE_CATEGORIES for char in text)


def check_roles(messages: list[Message]) -> None:
    """Known roles; system only first; user/assistant alternate starting with user.

    >>> check_roles([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
    ...              {"role": "assistant", "content": "a"}])
    >>> check_roles([{"role": "assistant", "content": "a"}])
    Traceback (most recent call last):
    ...
    sft_pipeline.ingest.reasons.RowReject: message 0 is 'assistant', expected 'user'
    """
    expected = ROLE_USER
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role not in ROLES:
            raise RowReject(reasons.UNKNOWN_ROLE, f"message {i} has unknown role {role!r}")
        if role == ROLE_SYSTEM:
            if i != 0:
                raise RowReject(reasons.MISPLACED_SYSTEM,
                                f"system message at position {i}, only the first may be system")
            continue
        if role != expected:
            raise RowReject(reasons.BAD_TURN_ORDER, f"message {i} is {role!r}, expected {expected!r}")
        expected = ROLE_ASSISTANT if role == ROLE_USER else ROLE_USER


def check_contents(messages: list[Message], max_chars: int) -> None:
    """Contents are strings, encodable as UTF-8, visible for user/assistant (:func:`is_blank`), within ``max_chars``.

    >>> check_contents([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}], 100)
    Traceback (most recent call last):
    ...
    sft_pipeline.ingest.reasons.RowReject: message 1 ('assistant') is empty
    """
    total = 0
    for i, msg in enumerate(messages):
        content = msg["content"]
        if not isinstance(content, str):
            raise RowReject(reasons.WRONG_TYPE, f"message {i} content is {type(content).__name__}, expected a string")
        if not content.isascii():
            try:
                content.encode("utf-8")
            except UnicodeEncodeError:
                raise RowReject(reasons.INVALID_UTF8, f"message {i} contains invalid UTF-8 / lone surrogates") from None
        if msg["role"] != ROLE_SYSTEM and is_blank(content):
            reason = reasons.EMPTY_USER if msg["role"] == ROLE_USER else reasons.EMPTY_ASSISTANT
            shown = " (only invisible characters)" if content.strip() else ""
            raise RowReject(reason, f"message {i} ({msg['role']!r}) is empty{shown}")
        total += len(content)
    if total > max_chars:
        raise RowReject(reasons.TOO_LONG, f"{total} characters, more than max_chars={max_chars}")


def validate_messages(messages: list[Message], *, max_chars: int, max_turns: int) -> None:
    """All checks, cheapest first; raise :class:`RowReject` on the first failure.

    >>> validate_messages([{"role": "user", "content": "q"}], max_chars=10, max_turns=4)
    Traceback (most recent call last):
    ...
    sft_pipeline.ingest.reasons.RowReject: no assistant turn
    """
    if len(messages) > max_turns:
        raise RowReject(reasons.TOO_MANY_TURNS, f"{len(messages)} messages, more than max_turns={max_turns}")
    check_roles(messages)
    check_contents(messages, max_chars)
    if not any(msg["role"] == ROLE_ASSISTANT for msg in messages):
        raise RowReject(reasons.NO_ASSISTANT, "no assistant turn")
