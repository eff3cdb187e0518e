"""Open-ended generation prompts: MT-Bench's first-turn questions, spread over categories."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import chain, zip_longest
from pathlib import Path

from sft_pipeline.errors import InputError

QUESTION_KEYS = ("question_id", "category", "turns")


def round_robin(rows: list[dict], key: str = "category") -> list[dict]:
    """Interleave rows by ``key`` (groups in first-seen order) so a short prefix covers every group.

    >>> rows = [{"category": c, "i": i} for i, c in enumerate("aabbc")]
    >>> [r["i"] for r in round_robin(rows)]
    [0, 2, 4, 1, 3]
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return [r for r in chain.from_iterable(zip_longest(*groups.values())) if r is not None]


def iter_jsonl(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """Yield ``(where, row)`` for each non-blank JSONL line; ``where`` names file and line.

    Unreadable files and invalid JSON raise one-line ``InputError``s that name ``what`` was read.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8"
        raise InputError(f"{path}: cannot read {what} ({reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg})") from None


def load_questions(path: str | Path, count: int) -> list[dict]:
    """``count`` MT-Bench questions as ``{"id", "category", "prompt"}`` (first turn only)."""
    if count <= 0:
        return []
    rows = []
    for where, row in iter_jsonl(path, "generation prompts"):
        if not isinstance(row, dict) or any(k not in row for k in QUESTION_KEYS) or not row["turns"]:
            raise InputError(f"{where}: expected {', '.join(QUESTION_KEYS)} with a first turn")
        rows.append({"id": row["question_id"], "category": row["category"], "prompt": row["turns"][0]})
    return round_robin(rows)[:count]


PROMPT_KEYS = ("key", "prompt", "instruction_id_list", "kwargs")  # IFEval's format, which IFBench shares


def check_prompt_row(row: object, where: str, check_instruction: Callable[[str, object, str, str], None]) -> dict:
    """An IFEval-format row (key, prompt, instruction ids and one kwargs per id) checked field by field;
    ``check_instruction(id, kwargs, prompt, where)`` checks one instruction against its benchmark's checkers."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object")
    missing = [k for k in PROMPT_KEYS if k not in row]
    if missing:
        raise InputError(f"{where}: missing field(s) {', '.join(missing)}")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise InputError(f"{where}: instruction_id_list and kwargs must be lists of equal length")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise InputError(f"{where}: prompt must be a non-empty string")
    for inst_id, kw in zip(ids, kwargs):
        check_instruction(inst_id, kw, row["prompt"], where)
    return {key: row[key] for key in PROMPT_KEYS}


def load_prompt_rows(path: str | Path, what: str, check_instruction: Callable[[str, object, str, str], None],
                     limit: int | None = None) -> list[dict]:
    """``limit`` rows (all when None) of an IFEval-format JSONL file, spread over it, each checked; one
    InputError line if none. Spread, not the first: IFBench's file is grouped by instruction family (its
    first 100 rows hold 4 of its 7 families)."""
    rows = [check_prompt_row(row, where, check_instruction) for where, row in iter_jsonl(path, what)]
    if not rows:
        raise InputError(f"{path}: no {what}")
    return spread(rows, limit)


def spread(items: list, limit: int | None) -> list:
    """``limit`` items evenly spaced over ``items``, in order (all of them when ``limit`` is None or larger).

    >>> spread(list(range(10)), 3), spread([1, 2], 5), spread([1, 2], None)
    ([0, 3, 6], [1, 2], [1, 2])
    """
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]
