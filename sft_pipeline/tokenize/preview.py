"""``mask_preview.md``: a few rows as token/label tables, supervised tokens marked."""

from __future__ import annotations

from typing import Sequence

from sft_pipeline.constants import IGNORE_INDEX
from sft_pipeline.escape import code, fence, inert_controls
from sft_pipeline.tokenize.verify import supervised_runs

MAX_PREVIEW_TOKENS = 200
SUPERVISED_MARK = "**train**"
MASKED_MARK = "·"


def token_cell(text: str) -> str:
    """A token's text made safe for one Markdown table cell (control characters shown as ``\\xNN``).

    >>> token_cell("a|b\\n"), token_cell("\\x1b[2J")
    ('`a\\\\|b\\\\n`', '`\\\\x1b[2J`')
    """
    shown = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("|", "\\|")
    shown = inert_controls(shown)
    return f"`{shown.replace('`', 'ˋ')}`" if shown.strip() else f"`{shown or '∅'}`"


def row_table(input_ids: Sequence[int], labels: Sequence[int], tokenizer, max_tokens: int = MAX_PREVIEW_TOKENS) -> str:
    shown = min(len(input_ids), max_tokens)
    pieces = tokenizer.convert_ids_to_tokens(list(input_ids[:shown]))
    texts = [tokenizer.convert_tokens_to_string([p]) for p in pieces]
    lines = ["| # | token | id | label |", "|---:|---|---:|---|"]
    for i, (text, tok, lab) in enumerate(zip(texts, input_ids, labels)):
        mark = SUPERVISED_MARK if lab != IGNORE_INDEX else MASKED_MARK
        lines.append(f"| {i} | {token_cell(text)} | {tok} | {mark} |")
    if shown < len(input_ids):
        lines.append(f"| … | {len(input_ids) - shown} more tokens | | |")
    return "\n".join(lines)


def supervised_text(input_ids: Sequence[int], labels: Sequence[int], tokenizer) -> str:
    """The decoded row with each supervised span wrapped in ⟦ ⟧ (control characters but newline and tab shown
    as ``\\xNN``)."""

    def dec(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out, prev = [], 0
    for a, b in supervised_runs(labels):
        out += [dec(input_ids[prev:a]), f"⟦{dec(input_ids[a:b])}⟧"]
        prev = b
    out.append(dec(input_ids[prev:]))
    return inert_controls("".join(out))


def mask_preview(rows: Sequence[tuple[str, Sequence[int], Sequence[int]]], tokenizer,
                 markers: tuple[str, str]) -> str:
    """Markdown: a summary line, then each row's text with supervised spans and its token table."""
    mid, last = (code(repr(m)) for m in markers)
    parts = ["# Label-mask preview", "",
             f"End-of-turn markers: {mid} (mid-conversation), {last} (final turn). "
             f"Supervised spans are shown as ⟦…⟧; in the tables, supervised tokens say {SUPERVISED_MARK}.", ""]
    for row_id, ids, labels in rows:
        supervised = len(labels) - list(labels).count(IGNORE_INDEX)
        parts += [f"## {code(inert_controls(row_id))}", "",
                  f"{len(ids)} tokens, {supervised} supervised (label = token id), the rest {IGNORE_INDEX}.", "",
                  fence(supervised_text(ids, labels, tokenizer)), "",
                  row_table(ids, labels, tokenizer), ""]
    return "\n".join(parts)
