"""Batched and multi-process encoding of many conversations.

Rows are rendered with the chat template, their assistant spans located, and each
chunk is tokenized by one fast-tokenizer call. With ``num_proc > 1`` chunks go to
worker processes (forked where safe, so the tokenizer is inherited, not re-loaded).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from sft_pipeline.tokenize.masks import EncodeSettings, Encoded, SpanError, encode_rendered, locate_turns, render_batch
from sft_pipeline.tokenize.template import TemplateInfo

FORK, SPAWN = "fork", "spawn"
__all__ = ["EncodeSettings", "RowProblem", "encode_all", "encode_many"]


@dataclass(frozen=True)
class RowProblem:
    """Why one row was not encoded: the chat template refused it (``refused``: the row is rejected, with the
    template's message), or its assistant turns cannot be located in its rendering (its masks cannot be built)."""

    message: str
    refused: bool = False


def _render_rows(tokenizer, conversations: Sequence[Sequence[dict]]) -> list[str | Exception]:
    """Rendered text of each row; a row the template refuses gets its exception instead."""
    try:
        return render_batch(tokenizer, conversations)
    except Exception:  # noqa: BLE001 - find the offending rows one by one
        out: list[str | Exception] = []
        for conv in conversations:
            try:
                out.append(render_batch(tokenizer, [conv])[0])
            except Exception as exc:  # noqa: BLE001 - templates raise jinja errors of any kind
                out.append(exc)
        return out


def first_line(exc: Exception) -> str:
    """
    >>> first_line(ValueError("bad role\\ndetails"))
    'bad role'
    >>> first_line(KeyError())
    'KeyError'
    """
    lines = str(exc).splitlines()
    return lines[0] if lines and lines[0] else type(exc).__name__


def encode_many(conversations: Sequence[Sequence[dict]], tokenizer, info: TemplateInfo,
                settings: EncodeSettings) -> list[Encoded | RowProblem]:
    """Encode rows; a row that cannot be encoded gets its problem instead."""
    results: list[Encoded | RowProblem] = []
    texts, turns, slots = [], [], []
    for conv, text in zip(conversations, _render_rows(tokenizer, conversations)):
        if isinstance(text, Exception):
            results.append(RowProblem(first_line(text), refused=True))
            continue
        text = info.finish(text, conv)
        try:
            row_turns = locate_turns(text, conv, info)
        except SpanError as exc:
            results.append(RowProblem(str(exc)))
            continue
        slots.append(len(results))
        results.append(RowProblem(""))
        texts.append(text)
        turns.append(row_turns)
    for slot, enc in zip(slots, encode_rendered(texts, turns, tokenizer, info, settings)):
        results[slot] = enc
    return results


_WORKER: dict = {}


def _init_worker(tokenizer, info: TemplateInfo, settings: EncodeSettings) -> None:
    _WORKER.update(tokenizer=tokenizer, info=info, settings=settings)


def _encode_chunk(conversations: Sequence[Sequence[dict]]) -> list[Encoded | RowProblem]:
    return encode_many(conversations, _WORKER["tokenizer"], _WORKER["info"], _WORKER["settings"])


def chunks(items: Sequence, size: int) -> list[Sequence]:
    """
    >>> chunks([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    return [items[i : i + size] for i in range(0, len(items), size)]


def mp_context():
    """Fork (workers inherit the tokenizer) unless other threads run, e.g. under Prefect, where fork can
    deadlock on a lock held by another thread; then spawn (the tokenizer is pickled to each worker)."""
    if FORK in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context(FORK)
    return multiprocessing.get_context(SPAWN)


def encode_all(conversations: Sequence[Sequence[dict]], tokenizer, info: TemplateInfo, settings: EncodeSettings,
               *, batch_rows: int, num_proc: int) -> list[Encoded | RowProblem]:
    """Encode every row, in chunks of ``batch_rows``, over ``num_proc`` processes."""
    parts = chunks(list(conversations), batch_rows)
    if num_proc <= 1 or len(parts) <= 1:
        return [r for part in parts for r in encode_many(part, tokenizer, info, settings)]
    with ProcessPoolExecutor(max_workers=min(num_proc, len(parts)), mp_context=mp_context(),
                             initializer=_init_worker, initargs=(tokenizer, info, settings)) as pool:
        return [r for part in pool.map(_encode_chunk, parts) for r in part]
