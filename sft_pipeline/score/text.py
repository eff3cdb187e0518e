"""Vectorised helpers over Arrow string arrays and flat token-hash arrays.

Everything here works on a whole batch at once (Arrow compute kernels or numpy over the
raw UTF-8 buffer); nothing loops over rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Bytes that Python's ``str.split()`` treats as whitespace in ASCII text. Other Unicode
# spaces (U+00A0, U+3000, ...) count as word characters here, a documented approximation.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True
# Odd 64-bit multiplier (golden ratio) for polynomial n-gram hashes; uint64 arithmetic wraps.
_MULT = np.uint64(0x9E3779B97F4A7C15)
_GROUP_SHIFT = np.uint64(40)  # repetition keys: group index in the high 24 bits


def clean(arr: pa.Array) -> pa.Array:
    """Nulls become empty strings, so that every kernel sees plain text.

    >>> clean(pa.array(["a", None])).to_pylist()
    ['a', '']
    """
    return pc.fill_null(arr, "") if arr.null_count else arr


def utf8_buffer(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array and offsets into them (first offset 0).

    >>> data, offsets = utf8_buffer(pa.array(["ab", "", "c"]))
    >>> bytes(data), offsets.tolist()
    (b'abc', [0, 2, 2, 3])
    """
    arr = clean(arr)
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset: arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data[offsets[0]: offsets[-1]], offsets - offsets[0]


def word_counts(arr: pa.Array) -> np.ndarray:
    """Whitespace-separated words per string, like ``len(s.split())`` for ASCII whitespace.

    >>> word_counts(pa.array(["  two words ", "", "one", "a\\tb\\nc", None])).tolist()
    [2, 0, 1, 3, 0]
    """
    data, offsets = utf8_buffer(arr)
    if len(data) == 0:
        return np.zeros(len(offsets) - 1, dtype=np.int64)
    space = _WHITESPACE[data]
    prev_space = np.empty_like(space)
    prev_space[0] = True
    prev_space[1:] = space[:-1]
    starts = offsets[:-1]
    prev_space[starts[starts < len(data)]] = True  # each string starts after a "space"
    word_starts = np.flatnonzero(prev_space & ~space)
    return np.searchsorted(word_starts, offsets[1:]) - np.searchsorted(word_starts, starts)


def starts_with_any(arr: pa.Array, prefixes: list[str]) -> np.ndarray:
    """True where the text, after leading whitespace, starts with one of ``prefixes``.

    >>> starts_with_any(pa.array([" Sure! ok", "Sure", "No"]), ["Sure!", "No"]).tolist()
    [True, False, True]
    """
    stripped = pc.utf8_ltrim_whitespace(clean(arr))
    return _any(stripped, prefixes, pc.starts_with)


def contains_any(arr: pa.Array, needles: list[str], head_chars: int | None = None) -> np.ndarray:
    """True where one of ``needles`` occurs (case-sensitive), optionally within the first chars.

    >>> contains_any(pa.array(["I believe x", "long preamble, I believe"]), ["I believe"], 12).tolist()
    [True, False]
    """
    arr = clean(arr)
    if head_chars is not None:
        arr = pc.utf8_slice_codeunits(arr, 0, head_chars)
    return _any(arr, needles, pc.match_substring)


def matches(arr: pa.Array, pattern: str, head_chars: int | None = None) -> np.ndarray:
    """Case-insensitive RE2 search, optionally within the first ``head_chars`` characters.

    >>> matches(pa.array(["As an AI model", "fine"]), r"\\bas an ai\\b").tolist()
    [True, False]
    """
    arr = clean(arr)
    if head_chars is not None:
        arr = pc.utf8_slice_codeunits(arr, 0, head_chars)
    return pc.match_substring_regex(arr, pattern, ignore_case=True).to_numpy(zero_copy_only=False)


def _any(arr: pa.Array, patterns: list[str], kernel) -> np.ndarray:
    out = np.zeros(len(arr), dtype=bool)
    for pattern in patterns:
        out |= kernel(arr, pattern).to_numpy(zero_copy_only=False)
    return out


def ngram_hashes(tokens: np.ndarray, groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of consecutive n-token windows that stay inside one group (groups sorted).

    >>> h, g = ngram_hashes(np.array([1, 2, 1, 2, 5], np.uint64), np.array([0, 0, 0, 0, 1]), 2)
    >>> g.tolist(), bool(h[0] == h[2]), bool(h[0] == h[1])
    ([0, 0, 0], True, False)
    """
    count = len(tokens) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    hashes = tokens[:count].copy()
    for k in range(1, n):
        hashes *= _MULT
        hashes += tokens[k: k + count]
    inside = groups[:count] == groups[n - 1: n - 1 + count]
    return hashes[inside], groups[:count][inside]


def repeated_fraction(hashes: np.ndarray, groups: np.ndarray, owner: np.ndarray, n_owners: int) -> np.ndarray:
    """Share of hashes repeating an earlier one of the same group, pooled per owner of groups.

    ``owner[g]`` is the owner (conversation) of group g (an assistant turn).

    >>> h = np.array([7, 7, 7, 8, 7, 9], np.uint64)
    >>> repeated_fraction(h, np.array([0, 0, 0, 0, 1, 3]), np.array([0, 0, 1, 2]), 3).tolist()
    [0.4, 0.0, 0.0]
    """
    if len(hashes) == 0:
        return np.zeros(n_owners)
    first = groups.min()
    mixed = (hashes * _MULT) >> (np.uint64(64) - _GROUP_SHIFT)  # top bits depend on all bits
    keys = ((groups - first).astype(np.uint64) << _GROUP_SHIFT) | mixed
    keys.sort()
    key_owner = owner[(keys >> _GROUP_SHIFT).astype(np.int64) + first]
    repeats = np.bincount(key_owner[1:][keys[1:] == keys[:-1]], minlength=n_owners)
    totals = np.bincount(key_owner, minlength=n_owners)
    return np.divide(repeats, totals, out=np.zeros(n_owners), where=totals > 0)


def group_sums(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum ``values`` per group index.

    >>> group_sums(np.array([1, 2, 3]), np.array([0, 2, 2]), 3).tolist()
    [1, 0, 5]
    """
    return np.bincount(groups, weights=values, minlength=n_groups).astype(values.dtype)
