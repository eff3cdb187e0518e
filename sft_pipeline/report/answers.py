"""The report's answers: base and tuned side by side, and how many answers ``max_new_tokens`` cut.

Answers are data: every string is escaped (prompts as quoted text, answers in fences longer than any
backtick run inside them).
"""

from __future__ import annotations

from sft_pipeline.escape import fence, md_inline, md_text
from sft_pipeline.report.numbers import MISSING, fmt

SIDES = ("base", "tuned")
EXAMPLES = 3  # before/after pairs near the top of the report; the rest of the questions follow at its end
QUESTIONS = "questions"
TITLES = {QUESTIONS: "MT-Bench questions"}


def percent(share: float | None) -> str:
    """
    >>> percent(0.625), percent(None)
    ('62 %', '–')
    """
    return MISSING if share is None else f"{100 * share:.0f} %"


def reply(side: str, gen: dict) -> str:
    status = "ended its turn" if gen["stopped"] else "cut by max_new_tokens"
    return (f'<div markdown="1">\n\n**{side.capitalize()}** ({fmt(gen["new_tokens"])} tokens, {status})\n\n'
            f'{fence(gen["text"] or "(empty)")}\n\n</div>')


def pair(number: int, gen: dict) -> str:
    quoted = "\n".join("> " + md_text(line) for line in str(gen["prompt"]).splitlines())
    both = "\n\n".join(reply(side, gen[side]) for side in SIDES)
    return (f"### {number}. {md_inline(gen.get('category', ''))} (question {md_inline(gen.get('id', ''))})\n\n"
            f'{quoted}\n\n<div class="pair" markdown="1">\n\n{both}\n\n</div>')


def examples_section(results: dict) -> str:
    """The first few questions, base and tuned answers side by side: what the tuning changed, to read."""
    gens = (results.get("generations") or [])[:EXAMPLES]
    if not gens:
        return ""
    return "\n\n".join(["## Before and after: base vs tuned answers"]
                       + [pair(i, g) for i, g in enumerate(gens, start=1)])


def more_answers_section(results: dict) -> str:
    gens = (results.get("generations") or [])[EXAMPLES:]
    if not gens:
        return ""
    return "\n\n".join([f"## More answers: base vs tuned ({len(gens)} more MT-Bench first turns)"]
                       + [pair(i, g) for i, g in enumerate(gens, start=EXAMPLES + 1)])


def cut_table(results: dict, table) -> str:
    """Per benchmark, the share of each model's answers that ``max_new_tokens`` cut before they ended."""
    cuts = results.get("cut") or {}
    if not cuts:
        return ""
    budget = (results.get("config") or {}).get("max_new_tokens")
    rows = [[TITLES.get(name, (results.get(name) or {}).get("title", name)), fmt(c.get("answers")),
             percent(c.get("base")), percent(c.get("tuned"))] for name, c in cuts.items()]
    note = (f"An answer is cut when it reaches max_new_tokens ({fmt(budget)}) before ending its turn; a benchmark "
            "whose answers are mostly cut scores truncation, not the instruction, and its metrics are flagged "
            "*cut* above (the gate does not judge a metric whose tuned answers are mostly cut).")
    return "### Answers cut by max_new_tokens\n\n" + table(["answers of", "n", "base cut", "tuned cut"], rows) + \
        "\n\n" + note
