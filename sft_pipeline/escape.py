"""Escaping of data-derived strings for Markdown (the report, the mask preview, the sweep report) and for
the terminal (:func:`terminal`: what the commands print and log).

It lives outside ``report/`` so that the tokenize stage, which uses it for its preview, does not
import the report (whose code then versions the evaluate stage alone). Every string that comes from data (prompts, model output, ids, categories, stage counts' keys)
goes through one of these before it reaches ``report.md`` or ``mask_preview.md``, so no
renderer (Python-Markdown here, Prefect's UI for artifacts) turns it into HTML, a link or an
image, and no backtick run inside it can close the code block around it.
"""

from __future__ import annotations

import html
import re

# Inline Markdown punctuation escaped everywhere: brackets (links, images), code, emphasis, table
# cells; "<", ">" and "&" become entities. Intra-word "_" and plain parentheses are left readable.
INLINE_SPECIALS = "\\`*[]|"
_INLINE_RE = re.compile("([" + re.escape(INLINE_SPECIALS) + "])")
# Line starts that would open a block (heading, bullet, numbered list): the marker is escaped.
_BLOCK_MARK_RE = re.compile(r"^(\s*)([#+-])", re.M)
_ORDERED_RE = re.compile(r"^(\s*\d+)([.)])", re.M)
_BACKTICKS_RE = re.compile(r"`+")
# Control characters (C0 but tab and newline, DEL, C1): a terminal or viewer would act on them.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert_controls(text: str) -> str:
    r"""Control characters other than tab and newline written visibly as ``\xNN``, so that none acts.

    >>> inert_controls("a\x1b[31mb\x00c\r\n\td\x85")
    'a\\x1b[31mb\\x00c\\x0d\n\td\\x85'
    """
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def md_inline(text: object) -> str:
    """Text escaped for use inside a line (a table cell, a heading): no HTML, links, emphasis or code.

    >>> print(md_inline("1. <b>[x]</b> | y"))
    1. &lt;b&gt;\\[x\\]&lt;/b&gt; \\| y
    """
    return _INLINE_RE.sub(r"\\\1", html.escape(str(text), quote=False))


def md_text(text: object) -> str:
    """Plain text as Markdown that renders as exactly that text: no HTML, links, emphasis or blocks.

    >>> print(md_text("<script>x</script> [a](javascript:b) *c* no_comma"))
    &lt;script&gt;x&lt;/script&gt; \\[a\\](javascript:b) \\*c\\* no_comma
    >>> print(md_text("# not a heading\\n1. nor a list"))
    \\# not a heading
    1\\. nor a list
    """
    escaped = md_inline(text)
    for pattern in (_BLOCK_MARK_RE, _ORDERED_RE):
        escaped = pattern.sub(r"\1\\\2", escaped)
    return escaped


def cell(value: object) -> str:
    """Text for one Markdown table cell (escaped, on one line).

    >>> cell("a|b\\nc")
    'a\\\\|b c'
    """
    return md_inline(str(value).replace("\n", " "))


def longest_backticks(text: str) -> int:
    """Length of the longest run of backticks in ``text``.

    >>> longest_backticks("a ``` b ` c"), longest_backticks("none")
    (3, 0)
    """
    return max((len(m) for m in _BACKTICKS_RE.findall(text)), default=0)


def fence(text: str, lang: str = "text") -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``.

    >>> print(fence("a ``` b"))
    ````text
    a ``` b
    ````
    """
    ticks = "`" * max(3, longest_backticks(text) + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def code(text: object) -> str:
    """An inline code span that survives backticks inside ``text`` (one line).

    >>> code("x"), code("a`b"), code("`")
    ('`x`', '``a`b``', '`` ` ``')
    """
    text = str(text).replace("\n", " ")
    ticks = "`" * (longest_backticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


# What a terminal acts on instead of showing: C0 controls but newline and tab (ESC starts colour, title and
# cursor sequences; CR overwrites a line), DEL, C1 controls, and bidirectional overrides that reorder text.
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = re.compile("[\n\t]")


def terminal(text: object, *, one_line: bool = False) -> str:
    """Text safe to print to a terminal: every control sequence shown as its escape, not acted on.

    ``one_line`` escapes newlines and tabs too (a file name inside a line of output).

    >>> print(terminal("x\\x1b]0;PWNED\\x07\\x1b[31mred.jsonl\\r\\nnext"))
    x\\x1b]0;PWNED\\x07\\x1b[31mred.jsonl\\r
    next
    >>> print(terminal("a\\nb\\u202ec", one_line=True))
    a\\nb\\u202ec
    """
    escaped = _TERMINAL_UNSAFE.sub(lambda m: ascii(m.group())[1:-1], str(text))
    return _LINE_BREAKS.sub(lambda m: ascii(m.group())[1:-1], escaped) if one_line else escaped
