"""The report as Markdown: summary table first, then gate, data, training, IFEval, generations."""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from sft_pipeline import constants as C

# metric -> (label, +1 if higher is better, -1 if lower is better, 0 if neither)
METRIC_INFO = {
    "heldout_loss": ("Held-out loss (assistant tokens)", -1),
    "heldout_perplexity": ("Held-out perplexity", -1),
    "ifeval_prompt_strict": ("IFEval prompt-level strict acc.", 1),
    "ifeval_inst_strict": ("IFEval instruction-level strict acc.", 1),
    "ifeval_prompt_loose": ("IFEval prompt-level loose acc.", 1),
    "ifeval_inst_loose": ("IFEval instruction-level loose acc.", 1),
    "stop_rate": ("Stop rate (ends before max_new_tokens)", 1),
    "repetition_rate": ("Repeated n-gram rate", -1),
    "mean_new_tokens": ("Mean new tokens", 0),
    "mean_words": ("Mean words", 0),
    "sycophantic_rate": ("Sycophantic opener rate", -1),
    "too_short_rate": ("Too-short response rate", -1),
}
MISSING = "–"
SIDES = ("base", "tuned")
SWEEP_COLUMNS = ("threshold", "rows", "tokens")


def ordered(keys: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``keys`` with the ``preferred`` ones first, in that order (JSON files store keys sorted).

    >>> ordered(["rows", "extra", "threshold"], ("threshold", "rows", "tokens"))
    ['threshold', 'rows', 'extra']
    """
    keys = list(keys)
    return [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]


def fmt(value: Any, signed: bool = False) -> str:
    """Compact number formatting for tables.

    >>> fmt(0.12345), fmt(3), fmt(None), fmt(-0.5, signed=True), fmt(0.25, signed=True)
    ('0.123', '3', '–', '-0.500', '+0.250')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def cell(value: Any) -> str:
    """A value made safe for a Markdown table cell.

    >>> cell("a|b\\nc")
    'a\\\\|b c'
    """
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-style Markdown table.

    >>> print(table(["a", "b"], [[1, "x"]]))
    | a | b |
    | --- | --- |
    | 1 | x |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fence(text: str, lang: str = "text") -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``.

    >>> print(fence("a ``` b"))
    ````text
    a ``` b
    ````
    """
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of nested dicts with dotted names (lists shown by length).

    >>> flatten({"rows": 3, "by": {"a": 1}, "ids": [1, 2]})
    [('rows', 3), ('by.a', 1), ('ids', '2 items')]
    """
    if isinstance(obj, dict):
        return [pair for k, v in obj.items() for pair in flatten(v, f"{prefix}{k}.")]
    if isinstance(obj, list):
        return [(prefix[:-1], f"{len(obj)} items")]
    return [(prefix[:-1], obj)]


def _verdict(results: dict) -> str:
    gate = results["gate"]
    checks = gate.get("checks", [])
    if gate["promoted"]:
        return f"**Verdict: promoted.** All {len(checks)} enabled gate checks passed (or were skipped)."
    failed = [c for c in checks if c["status"] == "failed"]
    why = "; ".join(f"`{c['metric']}` (delta {fmt(c['delta'], True)}, needs {c['condition']})" for c in failed)
    return f"**Verdict: NOT promoted.** Failed gate checks: {why}."


def _change(direction: int, delta: float | None) -> str:
    if delta is None or direction == 0 or delta == 0:
        return ""
    return "better" if delta * direction > 0 else "worse"


def summary_section(results: dict) -> str:
    m = results["metrics"]
    rows = [[METRIC_INFO.get(k, (k, 0))[0], fmt(m["base"][k]), fmt(m["tuned"][k]), fmt(m["delta"][k], True),
             _change(METRIC_INFO.get(k, (k, 0))[1], m["delta"][k])] for k in ordered(m["base"], list(METRIC_INFO))]
    return "## Summary: base vs tuned\n\n" + table(["metric", "base", "tuned", "delta", "change"], rows)


def gate_section(results: dict) -> str:
    rows = [[c["metric"], c["condition"], fmt(c["base"]), fmt(c["tuned"]), fmt(c["delta"], True), c["status"]]
            for c in results["gate"].get("checks", [])]
    body = table(["metric", "condition", "base", "tuned", "delta", "result"], rows) if rows else "No checks enabled."
    return "## Regression gate\n\n" + body


def counts_text(summary: dict | None) -> str:
    """One stage's manifest counts on one line.

    >>> counts_text({"counts": {"kept": 7, "by": {"a": 0.5}}}), counts_text(None)
    ('kept: 7; by.a: 0.500', '–')
    """
    return "; ".join(f"{k}: {fmt(v)}" for k, v in flatten((summary or {}).get("counts") or {})) or MISSING


def data_section(run: dict, images: set[str]) -> str:
    parts = ["## Data"]
    stages = run.get("stages") or {}
    rows = [[name, counts_text(stages[name])] for name in ordered(stages, C.STAGES) if name != C.STAGE_TRAIN]
    if rows:
        parts.append("### Stage counts\n\n" + table(["stage", "counts"], rows))
    sweep = run.get("sweep")
    if isinstance(sweep, list) and sweep:
        chosen = ((stages.get(C.STAGE_FILTER) or {}).get("config") or {}).get("threshold")
        keys = ordered(sweep[0].keys(), SWEEP_COLUMNS)
        sweep_rows = [[fmt(r.get(k)) + (" (used)" if k == "threshold" and r.get(k) == chosen else "")
                       for k in keys] for r in sweep]
        parts.append("### Quality-threshold sweep\n\n" + table(keys, sweep_rows))
    if C.HISTOGRAM_FILE in images:
        parts.append(f"![Quality score histogram]({C.HISTOGRAM_FILE})")
    return "\n\n".join(parts)


def training_section(run: dict, images: set[str]) -> str:
    parts = ["## Training"]
    train = (run.get("stages") or {}).get(C.STAGE_TRAIN) or {}
    scalars = {**dict(flatten(train.get("counts") or {})), **(run.get("train_metrics") or {})}
    if scalars:
        parts.append(table(["quantity", "value"], [[k, fmt(v)] for k, v in scalars.items()]))
    losses = run.get("train_loss") or []
    if losses:
        parts.append(f"Training loss {fmt(losses[0][1])} at step {losses[0][0]} -> "
                     f"{fmt(losses[-1][1])} at step {losses[-1][0]} ({len(losses)} logged steps).")
    if C.LOSS_CURVE_FILE in images:
        parts.append(f"![Training loss curve]({C.LOSS_CURVE_FILE})")
    return "\n\n".join(parts) if len(parts) > 1 else "## Training\n\nNo training summary available."


def ifeval_section(results: dict) -> str:
    per = results["ifeval"]["per_instruction"]
    rows = [[inst, f"{b[0]}/{b[1]}", "{}/{}".format(*per["tuned"].get(inst, [0, 0]))]
            for inst, b in per["base"].items()]
    intro = ("Checked by program with IFEval's checkers from lm-eval on "
             f"{len(results['ifeval']['prompts'])} prompts; loose passes per instruction type.")
    return "## Instruction following (IFEval checks)\n\n" + intro + "\n\n" + table(
        ["instruction", "base", "tuned"], rows)


def _reply(side: str, gen: dict) -> str:
    status = "stopped" if gen["stopped"] else "hit max_new_tokens"
    return f'<div markdown="1">\n\n**{side.capitalize()}** ({gen["new_tokens"]} tokens, {status})\n\n' \
           f'{fence(gen["text"] or "(empty)")}\n\n</div>'


def generations_section(results: dict) -> str:
    gens = results.get("generations") or []
    if not gens:
        return "## Generations\n\nNo generation prompts configured."
    parts = [f"## Generations: base vs tuned ({len(gens)} MT-Bench first turns)"]
    for i, g in enumerate(gens, start=1):
        quoted = "\n".join("> " + html.escape(line, quote=False) for line in g["prompt"].splitlines())
        pair = "\n\n".join(_reply(side, g[side]) for side in SIDES)
        parts.append(f"### {i}. {g.get('category', '')} (question {g.get('id', '')})\n\n{quoted}\n\n"
                     f'<div class="pair" markdown="1">\n\n{pair}\n\n</div>')
    return "\n\n".join(parts)


def header(results: dict) -> str:
    cfg = results.get("config") or {}
    decoding = "sampling (T={})".format(cfg.get("temperature")) if cfg.get("do_sample") else "greedy"
    facts = [f"model `{results.get('model', '?')}`", f"seed {results.get('seed', '?')}",
             f"held-out {results['heldout']['rows']} rows / {results['heldout']['tokens']} tokens",
             f"decoding {decoding}, max_new_tokens {cfg.get('max_new_tokens', '?')}"]
    return "# SFT evaluation report\n\n" + _verdict(results) + "\n\n" + " · ".join(facts)


def build_markdown(results: dict, run: dict, images: set[str]) -> str:
    parts = [header(results), summary_section(results)]
    if C.METRIC_BARS_FILE in images:
        parts.append(f"![Metrics base vs tuned]({C.METRIC_BARS_FILE})")
    parts += [gate_section(results), data_section(run, images), training_section(run, images),
              ifeval_section(results), generations_section(results)]
    return "\n\n".join(parts) + "\n"
