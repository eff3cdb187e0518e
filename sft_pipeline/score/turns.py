"""Flatten a batch of conversations into one row per message, with numpy index arrays.

``messages`` is ``list<struct<role, content>>``; after flattening, message ``i`` belongs
to conversation ``conv[i]`` and has role code ``role[i]``. Assistant turns are paired
with the message just before them when that message is a user turn (their instruction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_pipeline import constants
from sft_pipeline.score.text import clean, filled

ROLE_CODES = {constants.ROLE_SYSTEM: 0, constants.ROLE_USER: 1, constants.ROLE_ASSISTANT: 2}
SYSTEM, USER, ASSISTANT = ROLE_CODES.values()
UNKNOWN_ROLE = -1


@dataclass(frozen=True)
class Turns:
    """The messages of ``n_convs`` conversations, flattened in conversation order."""

    n_convs: int
    conv: np.ndarray  # int64 conversation index of each message (non-decreasing)
    position: np.ndarray  # int64 index of the message inside its conversation
    role: np.ndarray  # int8 role code (UNKNOWN_ROLE for anything else, nulls included)
    content: pa.Array  # string, nulls replaced by ""
    n_messages: np.ndarray  # int64 per conversation

    @property
    def assistant(self) -> np.ndarray:
        return self.role == ASSISTANT

    def previous(self) -> np.ndarray:
        """Index of the message before each message in the same conversation, or -1."""
        return np.where(self.position > 0, np.arange(len(self.role)) - 1, -1)


def role_codes(roles: pa.Array) -> np.ndarray:
    """Map role strings to small ints; unknown roles and nulls become UNKNOWN_ROLE.

    >>> role_codes(pa.array(["user", "assistant", "system", "bot", None])).tolist()
    [1, 2, 0, -1, -1]
    """
    names = pa.array(list(ROLE_CODES))
    index = pc.index_in(roles, value_set=names).to_numpy(zero_copy_only=False)
    codes = np.array(list(ROLE_CODES.values()), dtype=np.int8)
    found = ~np.isnan(index) if index.dtype.kind == "f" else np.ones(len(index), bool)
    out = np.full(len(index), UNKNOWN_ROLE, dtype=np.int8)
    out[found] = codes[index[found].astype(np.int64)]
    return out


def flatten(messages: pa.Array) -> Turns:
    """Flatten a ``list<struct<role, content>>`` array (null lists count as empty).

    >>> t = flatten(pa.array([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}],
    ...                       None, [{"role": "assistant", "content": "x"}]]))
    >>> t.conv.tolist(), t.position.tolist(), t.role.tolist(), t.content.to_pylist(), t.n_messages.tolist()
    ([0, 0, 2], [0, 1, 0], [1, 2, 2], ['hi', '', 'x'], [2, 0, 1])
    """
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    n_convs = len(messages)
    n_messages = filled(pc.list_value_length(messages), 0).to_numpy(zero_copy_only=False)
    n_messages = n_messages.astype(np.int64)
    flat = messages.flatten()  # skips null lists, respects slicing
    conv = np.repeat(np.arange(n_convs, dtype=np.int64), n_messages)
    starts = np.cumsum(n_messages) - n_messages
    position = np.arange(len(flat), dtype=np.int64) - starts[conv]
    return Turns(
        n_convs=n_convs,
        conv=conv,
        position=position,
        role=role_codes(pc.struct_field(flat, "role")),
        content=clean(pc.struct_field(flat, "content")),
        n_messages=n_messages,
    )


def instruction_index(turns: Turns) -> np.ndarray:
    """For each message, the user turn just before it in its conversation, or -1.

    >>> t = flatten(pa.array([[{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"},
    ...                        {"role": "user", "content": "u"}, {"role": "assistant", "content": "b"}]]))
    >>> instruction_index(t).tolist()
    [-1, -1, -1, 2]
    """
    prev = turns.previous()
    has_user = prev >= 0
    has_user[has_user] = turns.role[prev[has_user]] == USER
    return np.where(has_user, prev, -1)
