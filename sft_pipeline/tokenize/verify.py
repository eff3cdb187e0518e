"""Verification gate on label masks, checked from the token ids alone before anything is written.

For every row: labels equal the input ids where supervised; at least one token is
supervised; and unless the row was cut inside a turn, there is one supervised run per
target assistant turn, each decoding to that turn's content and ending with the
template's end-of-turn marker. With ``require_eot`` a row must also supervise at least
one end-of-turn marker. A violation stops the stage with the offending row ids.
The gate returns each row's count of supervised end-of-turn markers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sft_pipeline.constants import IGNORE_INDEX, ROLE_ASSISTANT
from sft_pipeline.errors import VerificationError
from sft_pipeline.tokenize.masks import TRAIN_LAST, THINK_OPEN, content_candidates

SLACK_CHARS = 8  # text a token straddling a span edge may add beyond it
HEAD_CHARS = 16  # leading characters of a turn's content checked at the start of its run
MAX_LISTED = 10  # offending rows named in the error
REPLACEMENT_CHAR = "\ufffd"


def supervised_runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open index ranges of consecutive supervised labels.

    >>> supervised_runs([-100, 5, 6, -100, 7])
    [(1, 3), (4, 5)]
    """
    on = np.concatenate([[False], np.asarray(labels) != IGNORE_INDEX, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def target_turns(messages: Sequence[dict], train_on: str, kept: int | None = None) -> list[str]:
    """Contents of the assistant turns that must be supervised, of the first ``kept`` (default: all).

    >>> msgs = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"},
    ...         {"role": "assistant", "content": "b"}]
    >>> target_turns(msgs, "last_assistant"), target_turns(msgs, "last_assistant", 1), target_turns(msgs, "x", 1)
    (['b'], ['a'], ['a'])
    """
    turns = [m["content"] for m in messages if m["role"] == ROLE_ASSISTANT][:kept]
    return turns[-1:] if train_on == TRAIN_LAST else turns


def _starts_with_content(text: str, content: str) -> bool:
    """Whether a supervised run begins with the turn's content (a truncated run may be short).

    >>> _starts_with_content("\\nHello there<|im_end|>", "Hello there"), _starts_with_content("Hel", "Hello")
    (True, True)
    >>> _starts_with_content("user\\nWhat is 2+2? 4", "4")
    False
    """
    text = text.lstrip().rstrip(REPLACEMENT_CHAR)  # a head cut inside a multi-byte character
    head = text[: HEAD_CHARS + SLACK_CHARS]
    if head.startswith(THINK_OPEN):
        return True
    size = min(HEAD_CHARS, len(text))
    return any(0 <= head.find(cand.strip()[:size]) <= SLACK_CHARS for cand, _ in content_candidates(content))


def _ends_with_marker(text: str, markers: Sequence[str]) -> bool:
    return any(m in text[-(len(m) + SLACK_CHARS):] for m in markers if m)


def eot_flags(input_ids: Sequence[int], labels: Sequence[int], markers: Sequence[str],
              decode: Callable[[Sequence[int]], str]) -> list[bool]:
    """For each supervised run, whether it ends with an end-of-turn marker (only its tail is decoded)."""
    tail = max(map(len, markers)) + SLACK_CHARS
    return [_ends_with_marker(decode(input_ids[max(a, b - tail) : b]), markers) for a, b in supervised_runs(labels)]


def row_problem(input_ids: Sequence[int], labels: Sequence[int], *, truncated: bool, turns: Sequence[str],
                markers: Sequence[str], decode: Callable[[Sequence[int]], str]) -> str | None:
    """What is wrong with one row's mask, or None (only a run's head and tail are decoded)."""
    if len(labels) != len(input_ids):
        return "labels and input_ids differ in length"
    ids, labs = np.asarray(input_ids), np.asarray(labels)
    if np.any((labs != IGNORE_INDEX) & (labs != ids)):
        return "a label differs from its input token"
    runs = supervised_runs(labels)
    if not runs:
        return "no supervised token"
    if len(runs) > len(turns) or (not truncated and len(runs) != len(turns)):
        return f"{len(runs)} supervised spans for {len(turns)} assistant turns"
    tail = max(map(len, markers)) + SLACK_CHARS  # a token holds at least one character
    for k, ((a, b), content) in enumerate(zip(runs, turns), start=1):
        if not _starts_with_content(decode(input_ids[a : min(b, a + HEAD_CHARS + SLACK_CHARS)]), content):
            return f"assistant turn {k}: supervised span does not start at its content"
        if not truncated and not _ends_with_marker(decode(input_ids[max(a, b - tail) : b]), markers):
            return f"assistant turn {k}: end-of-turn marker not supervised"
    return None


def check_rows(rows: Sequence[tuple[str, Sequence[int], Sequence[int], bool, Sequence[str]]], tokenizer,
               markers: Sequence[str], *, require_eot: bool = False) -> list[tuple[int, bool]]:
    """Raise VerificationError naming every row (id, problem) that fails; rows: (id, ids, labels, truncated, turns)
    where ``truncated`` means cut inside a turn. Returns, per row, its count of supervised end-of-turn markers
    and whether its last supervised run ends with one."""

    backend = getattr(tokenizer, "backend_tokenizer", None)

    def decode(ids: Sequence[int]) -> str:
        if backend is not None:  # the fast tokenizer's own decoder, without per-id Python conversion
            return backend.decode(list(ids), skip_special_tokens=False)
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    bad, eots = [], []
    for row_id, ids, labels, truncated, turns in rows:
        problem = row_problem(ids, labels, truncated=truncated, turns=turns, markers=markers, decode=decode)
        # An uncut row that passes has one marker-ending run per turn; only cut rows need decoding.
        flags = eot_flags(ids, labels, markers, decode) if truncated else [True] * len(supervised_runs(labels))
        eots.append((sum(flags), bool(flags) and flags[-1]))
        if not problem and require_eot and not eots[-1][0]:
            problem = "no supervised end-of-turn token"
        if problem:
            bad.append(f"{row_id} ({problem})")
    if bad:
        raise VerificationError(f"tokenize: label-mask check failed for {listed(bad)}")
    return eots


def listed(problems: Sequence[str]) -> str:
    """Rows and their problems, the first ``MAX_LISTED`` named.

    >>> listed(["a (x)"]), listed([str(i) for i in range(12)])[-18:]
    ('1 row(s): a (x)', '7; 8; 9 and 2 more')
    """
    more = f" and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} row(s): {'; '.join(problems[:MAX_LISTED])}{more}"
