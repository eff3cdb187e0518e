"""What happens to a row longer than ``tokenize.max_length``: one policy, with its window, its drops and its gate.

* ``whole_turns`` (the default): keep the tokens up to the end of the last assistant turn whose
  end-of-turn marker lies inside ``max_length``, so no supervised turn is ever cut; a row whose first
  assistant turn does not fit is dropped; every kept row must supervise an end-of-turn marker (the gate).
* ``keep_start``: keep the first ``max_length`` tokens, wherever the cut falls.
* ``drop``: drop longer rows (encoded as ``keep_start``, then dropped).

Under every policy a shortened row left with no supervised token is dropped. The config field
``tokenize.truncation`` is this type; the stage asks it for the window, the drop reason, the gate's
end-of-turn rule and the counts, and compares no policy names itself.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from sft_pipeline.tokenize.masks import Encoded

DROP_TOO_LONG = "longer_than_max_length"
DROP_NO_SUPERVISION = "no_supervised_tokens_after_truncation"
DROP_FIRST_TURN_TOO_LONG = "first_assistant_turn_longer_than_max_length"
DROP_COUNTS = {"dropped_too_long": DROP_TOO_LONG, "dropped_no_supervised_tokens": DROP_NO_SUPERVISION,
               "rows_dropped_first_turn_too_long": DROP_FIRST_TURN_TOO_LONG}  # stage count -> drop reason


@dataclass(frozen=True)
class Window:
    """The part of one row that is kept."""

    length: int | None  # tokens kept (None: the whole row)
    turns_kept: int | None  # assistant turns kept whole, all when uncut (None: the policy cuts anywhere)


def turns_that_fit(turn_ends: Sequence[int], max_length: int) -> int:
    """How many leading turns end (marker included) within ``max_length`` tokens.

    >>> turns_that_fit([40, 90, 300], 256), turns_that_fit([300, 400], 256), turns_that_fit([256], 256)
    (2, 0, 1)
    """
    return bisect_right(list(turn_ends), max_length)


class Truncation(str, Enum):
    """The truncation policy (``tokenize.truncation``)."""

    WHOLE_TURNS = "whole_turns"
    KEEP_START = "keep_start"
    DROP = "drop"

    def __str__(self) -> str:
        return self.value

    @property
    def requires_eot(self) -> bool:
        """Whether the gate requires every kept row to supervise an end-of-turn marker."""
        return self is Truncation.WHOLE_TURNS

    def window(self, length: int, max_length: int | None, turns: int,
               turn_ends: Callable[[], Sequence[int]]) -> Window:
        """The kept part of a row of ``length`` tokens with ``turns`` assistant turns; ``turn_ends`` gives the
        token index after each turn's end-of-turn marker (asked only when the row is too long).

        >>> ends = lambda: [40, 90, 300]
        >>> Truncation.WHOLE_TURNS.window(310, 256, 3, ends), Truncation.KEEP_START.window(310, 256, 3, ends)
        (Window(length=90, turns_kept=2), Window(length=256, turns_kept=None))
        >>> Truncation.WHOLE_TURNS.window(200, 256, 3, ends), Truncation.WHOLE_TURNS.window(310, 30, 3, ends)
        (Window(length=None, turns_kept=3), Window(length=0, turns_kept=0))
        """
        whole = self is Truncation.WHOLE_TURNS
        if max_length is None or length <= max_length:
            return Window(None, turns if whole else None)
        if not whole:
            return Window(max_length, None)
        ends = turn_ends()
        kept = turns_that_fit(ends, max_length)
        return Window(ends[kept - 1] if kept else 0, kept)

    def drop_reason(self, enc: Encoded) -> str | None:
        """Why an encoded row is dropped under this policy, or None when it is kept."""
        if enc.truncated and self is Truncation.DROP:
            return DROP_TOO_LONG
        if enc.turns_kept == 0:  # whole_turns: the first assistant turn does not fit; never cut
            return DROP_FIRST_TURN_TOO_LONG
        if enc.truncated and enc.supervised == 0:
            return DROP_NO_SUPERVISION
        return None


def drop_counts(reasons: Sequence[str]) -> dict[str, int]:
    """The stage's count of each truncation drop.

    >>> drop_counts([DROP_TOO_LONG, "other", DROP_TOO_LONG])["dropped_too_long"]
    2
    """
    return {name: list(reasons).count(reason) for name, reason in DROP_COUNTS.items()}


def truncation_stats(encoded: Sequence[Encoded]) -> dict[str, int]:
    """Train rows shortened to whole turns, the assistant turns that left out, and those kept."""
    return {"rows_shortened": sum(e.truncated and not e.cut_inside_turn for e in encoded),
            "assistant_turns_dropped": sum(e.turns_dropped for e in encoded),
            "assistant_turns_kept": sum(e.turns if e.turns_kept is None else e.turns_kept for e in encoded)}
