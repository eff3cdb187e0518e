"""Text for a terminal that no row can take over: every data string made inert, styles as colours or marks.

A row can hold terminal escape sequences (ESC, CSI, OSC), NUL, C1 controls, bidirectional overrides and
invisible format characters. :func:`terminal_text` writes all of them visibly (``\\x1b``, ``\\u202e``), so the
terminal shows them instead of acting on them. :class:`Painter` adds the only escape sequences the output
holds, its own colours, after that; without colours (output piped, ``NO_COLOR`` set) styles that carry
meaning become plain marks, e.g. supervised text between ``⟦`` and ``⟧``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import IO

from sft_pipeline.escape import inert_controls

# Bidirectional embeddings, overrides and isolates, directional marks, zero-width and other invisible
# format characters, line and paragraph separators: a terminal or viewer would reorder or hide text with them.
_INVISIBLE_RE = re.compile("[\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")
SGR = {"head": "1", "good": "32", "bad": "31", "warn": "33", "dim": "2", "sup": "32", "sup_eot": "1;4;32",
       "eot": "4", "cut": "1;33"}
RESET = "\x1b[0m"
MARKS = {"sup": ("⟦", "⟧"), "cut": ("", "")}
SUPERVISED_OPEN, SUPERVISED_CLOSE = MARKS["sup"]
COLOUR_CHOICES = ("auto", "always", "never")


def terminal_text(text: object, lines: bool = False) -> str:
    r"""``text`` with every control and invisible format character written as an escape (``lines``: newlines
    and tabs kept, else shown as ``\n`` and ``\t`` so that the text stays on one line).

    >>> terminal_text("a\x1b]0;x\x07\u202eb\nc")
    'a\\x1b]0;x\\x07\\u202eb\\nc'
    >>> terminal_text("a\tb\nc\x9b2J", lines=True)
    'a\tb\nc\\x9b2J'
    """
    text = str(text)
    if not lines:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    text = inert_controls(text)
    return _INVISIBLE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def wants_colour(choice: str = "auto", stream: IO | None = None) -> bool:
    """Colours for ``always``; for ``auto`` only on a terminal, with ``NO_COLOR`` unset and ``TERM`` not dumb."""
    if choice != "auto":
        return choice == "always"
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


@dataclass(frozen=True)
class Painter:
    """Turns data into inert text, styled with colours (``colour``) or with plain marks."""

    colour: bool

    def __call__(self, text: object, style: str | None = None, *, lines: bool = False) -> str:
        r"""
        >>> Painter(False)("x\x1b[2J", "sup"), Painter(True)("ok", "good")
        ('⟦x\\x1b[2J⟧', '\x1b[32mok\x1b[0m')
        """
        shown = terminal_text(text, lines)
        if style is None:
            return shown
        if self.colour:
            return f"\x1b[{SGR[style]}m{shown}{RESET}" if shown else ""
        opening, closing = MARKS.get(style, ("", ""))
        return f"{opening}{shown}{closing}"

    def span(self, pieces: list[tuple[str, bool]], supervised: bool) -> str:
        """Rendered text of one run of tokens, its end-of-turn markers flagged in ``pieces`` (text, is marker):
        coloured piece by piece, or as a whole between marks when ``supervised``.

        >>> Painter(False).span([("Hi", False), ("<eot>", True)], True)
        '⟦Hi<eot>⟧'
        """
        if self.colour:
            styles = ("sup", "sup_eot") if supervised else (None, "eot")
            return "".join(self(text, styles[marker], lines=True) for text, marker in pieces)
        inner = "".join(self(text, lines=True) for text, _ in pieces)
        return f"{SUPERVISED_OPEN}{inner}{SUPERVISED_CLOSE}" if supervised else inner
