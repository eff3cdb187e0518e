"""The report as Markdown: verdict and summary table first, then gate, data, training, benchmarks, generations.

Every data-derived string is escaped (:mod:`sft_pipeline.escape`); plots are embedded
as ``data:`` URIs in reference-style image links at the end, so the same file reads whole in
a browser, in Prefect's artifact view and as text.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sft_pipeline import constants
from sft_pipeline.escape import cell, code, md_inline
from sft_pipeline.report.answers import SIDES, cut_table, examples_section, more_answers_section
from sft_pipeline.report.numbers import MISSING, fmt, interval, label, quantity
from sft_pipeline.stages import NAMES as STAGE_NAMES
from sft_pipeline.verdicts import (FAILED, INCONCLUSIVE, NO_CHANGE, NOT_PROMOTED, PROMOTED, TOLERANCE_MEANING,
                                   UNMEASURED)

SWEEP_COLUMNS = ("threshold", "rows", "tokens")
VERDICT_TEXT = {
    PROMOTED: "**Verdict: promoted.** Every enabled gate check's 95 % interval lies within its tolerance.",
    NOT_PROMOTED: "**Verdict: NOT promoted.** {why}.",
    INCONCLUSIVE: "**Verdict: inconclusive, so NOT promoted.** {why}: more data (or longer answers) is needed to "
                  "decide (see the gate table).",
}
BLOCKING = {NOT_PROMOTED: (FAILED, UNMEASURED), INCONCLUSIVE: (INCONCLUSIVE, UNMEASURED)}  # statuses named in why
STATUS_TEXT = {FAILED: "significantly worse than tolerated", INCONCLUSIVE: "the interval straddles the tolerance",
               UNMEASURED: "could not be measured"}
FEW_ITEMS = 20  # below this many items a percentile bootstrap interval under-covers badly
VERDICT_SHORT = {NO_CHANGE: "n.s."}  # keeps the summary table narrow enough for Prefect's UI
IMAGES = {constants.METRIC_DELTAS_FILE: "Each metric's paired change, tuned minus base, with its 95 % interval",
          constants.HISTOGRAM_FILE: "Quality score histogram", constants.LOSS_CURVE_FILE: "Training loss curve"}


def ordered(keys: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``keys`` with the ``preferred`` ones first, in that order (JSON files store keys sorted).

    >>> ordered(["rows", "extra", "threshold"], ("threshold", "rows", "tokens"))
    ['threshold', 'rows', 'extra']
    """
    keys = list(keys)
    return [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-style Markdown table; cells are escaped text.

    >>> print(table(["a", "b"], [[1, "x|y"]]))
    | a | b |
    | --- | --- |
    | 1 | x\\|y |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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


def image(name: str) -> str:
    """A reference-style image; :func:`image_refs` defines the reference."""
    return f"![{IMAGES[name]}][{name}]"


def _why(check: dict) -> str:
    if check["status"] == UNMEASURED:
        primary = " (the primary metric)" if check.get("primary") else ""
        return f"{code(check['metric'])}{primary} could not be measured (no value, or its tuned answers mostly cut)"
    return (f"{code(check['metric'])} {STATUS_TEXT[check['status']]} (delta {fmt(check['delta'], True)}, 95 % "
            f"interval {interval(check.get('low'), check.get('high'))}, needs {check['condition']})")


def _verdict(results: dict) -> str:
    gate = results["gate"]
    verdict = gate.get("verdict") or (PROMOTED if gate["promoted"] else NOT_PROMOTED)
    named = [c for c in gate.get("checks", []) if c["status"] in BLOCKING.get(verdict, ())]
    why = "; ".join(_why(c) for c in named) or "No gate check is enabled"
    return VERDICT_TEXT[verdict].format(why=why)


def comparison(results: dict) -> dict[str, dict]:
    """Per-metric entries in report order; older eval.json files without intervals get point values only."""
    if results.get("comparison"):
        return {e["metric"]: e for e in results["comparison"]}
    m = results["metrics"]
    return {k: {"metric": k, "label": k, "base": m["base"][k], "tuned": m["tuned"][k], "delta": m["delta"][k]}
            for k in m["base"]}


def sample_sizes(results: dict) -> str:
    """What n was for each group of metrics.

    >>> sample_sizes({"heldout": {"rows": 21}, "benchmarks": ["ifeval"], "ifeval": {"title": "IFEval",
    ...               "prompts": [0] * 40}, "generations": [0] * 4})
    'held-out loss: 21 rows; IFEval: 40 prompts; behaviour rates: 44 answers'
    """
    benches = [(results[b].get("title", b), len(results[b]["prompts"])) for b in results.get("benchmarks", [])]
    answers = sum(n for _, n in benches) + len(results.get("generations") or [])
    parts = [f"held-out loss: {fmt(results['heldout']['rows'])} rows"]
    parts += [f"{md_inline(title)}: {fmt(n)} prompts" for title, n in benches]
    return "; ".join(parts + [f"behaviour rates: {fmt(answers)} answers"])


def verdict_cell(entry: dict) -> str:
    """A metric's verdict, flagged *cut* when most answers behind it (on either side) hit max_new_tokens.

    >>> verdict_cell({"verdict": "better", "mostly_cut_base": True}), verdict_cell({"verdict": "no significant change"})
    ('better (cut: base)', 'n.s.')
    """
    text = VERDICT_SHORT.get(entry.get("verdict"), entry.get("verdict") or MISSING)
    cut = [side for side in SIDES if entry.get(f"mostly_cut_{side}")]
    return f"{text} (cut: {' and '.join(cut)})" if cut else text


def summary_section(results: dict) -> str:
    rows = [[e["label"], fmt(e["base"]), fmt(e["tuned"]), fmt(e["delta"], True), verdict_cell(e),
             interval(e.get("low"), e.get("high"))] for e in comparison(results).values()]
    note = ("Delta is tuned minus base; the 95 % interval of the delta is a paired bootstrap (items resampled "
            "together for both models, seeded); the verdict says better or worse only when that interval excludes 0 "
            f"(n.s.: no significant change; –: no good direction). Items: {sample_sizes(results)}.")
    if any((e.get("n") or FEW_ITEMS) < FEW_ITEMS for e in comparison(results).values()):
        note += (f" **Fewer than {FEW_ITEMS} items on some metrics: bootstrap intervals are too narrow on so few "
                 "items; treat them as indicative only.**")
    body = table(["metric", "base", "tuned", "delta", "verdict", "95 % interval"], rows)
    return "\n\n".join(part for part in ("## Summary: base vs tuned", body, note, cut_table(results, table)) if part)


def passes_at(check: dict) -> str:
    """The delta the check needs to pass at this sample size (its interval's spread as observed).

    >>> passes_at({"condition": "tuned - base >= -0.05", "passing_delta": 0.036}), passes_at({})
    ('delta >= +0.036', '–')
    """
    if check.get("passing_delta") is None:
        return MISSING
    return f"delta {'>=' if '>=' in check['condition'] else '<='} {fmt(check['passing_delta'], True)}"


def gate_section(results: dict) -> str:
    gate = results["gate"]
    rows = [[c["metric"] + (" (primary)" if c.get("primary") else ""), c["condition"], fmt(c["delta"], True),
             interval(c.get("low"), c.get("high")), c["status"], fmt(c.get("n")), passes_at(c), fmt(c.get("needed_n"))]
            for c in gate.get("checks", [])]
    if not rows:
        return "## Regression gate\n\nNo checks enabled."
    needs = [f"- {code(c['metric'])}: about {fmt(c['needed_n'])} items (now {fmt(c['n'])}) would make the "
             f"interval narrower than the distance of the delta from the tolerance."
             for c in gate["checks"] if c.get("needed_n")]
    note = (TOLERANCE_MEANING + " *Passes at* is the delta a check needs at this sample size: where it is "
            "beyond 0 on the good side, only a clear gain can pass, and an inconclusive result says the sample is "
            "too small, not that the model regressed.")
    body = table(["metric", "condition", "delta", "95 % interval", "result", "n", "passes at", "n needed"], rows)
    return "\n\n".join(["## Regression gate", body, note] + (["\n".join(needs)] if needs else []))


def stage_table(summary: dict) -> str:
    """One stage's manifest counts (and duration) as a labelled two-column table."""
    pairs = flatten(summary.get("counts") or {})
    if summary.get("duration_s") is not None:
        pairs.append(("duration_s", summary["duration_s"]))
    return table(["quantity", "value"], [[label(k), quantity(k, v)] for k, v in pairs])


def data_section(run: dict, images: set[str]) -> str:
    parts = ["## Data"]
    stages = run.get("stages") or {}
    for name in ordered(stages, STAGE_NAMES):
        if name not in (constants.STAGE_TRAIN, constants.STAGE_BASELINE) and stages[name]:
            parts.append(f"### Stage: {md_inline(name)}\n\n" + stage_table(stages[name]))
    sweep = run.get("sweep")
    if isinstance(sweep, list) and sweep:
        chosen = ((stages.get(constants.STAGE_FILTER) or {}).get("config") or {}).get("threshold")
        keys = ordered(sweep[0].keys(), SWEEP_COLUMNS)
        sweep_rows = [[fmt(r.get(k)) + (" (used)" if k == "threshold" and r.get(k) == chosen else "")
                       for k in keys] for r in sweep]
        parts.append("### Quality-threshold sweep\n\n" + table([md_inline(k) for k in keys], sweep_rows))
    if constants.HISTOGRAM_FILE in images:
        parts.append(image(constants.HISTOGRAM_FILE))
    return "\n\n".join(parts)


def training_section(run: dict, images: set[str]) -> str:
    parts = ["## Training"]
    train = (run.get("stages") or {}).get(constants.STAGE_TRAIN) or {}
    scalars = {**dict(flatten(train.get("counts") or {})), **(run.get("train_metrics") or {})}
    if scalars:
        parts.append(table(["quantity", "value"], [[label(k), quantity(k, v)] for k, v in scalars.items()]))
    losses = run.get("train_loss") or []
    if losses:
        parts.append(f"Training loss {fmt(losses[0][1])} at step {losses[0][0]} -> "
                     f"{fmt(losses[-1][1])} at step {losses[-1][0]} ({len(losses)} logged steps).")
    if constants.LOSS_CURVE_FILE in images:
        parts.append(image(constants.LOSS_CURVE_FILE))
    return "\n\n".join(parts) if len(parts) > 1 else "## Training\n\nNo training summary available."


def bench_section(results: dict, name: str) -> str:
    bench = results[name]
    title = bench.get("title", name)
    per = bench["per_instruction"]
    rows = [[inst, f"{b[0]}/{b[1]}", "{}/{}".format(*per["tuned"].get(inst, [0, 0]))]
            for inst, b in per["base"].items()]
    checkers = bench.get("checkers", "its own checkers")
    intro = (f"Checked by program with {md_inline(checkers)} on {fmt(len(bench['prompts']))} prompts; "
             "loose passes per instruction type.")
    return f"## Instruction following ({md_inline(title)} checks)\n\n" + intro + "\n\n" + table(
        ["instruction", "base", "tuned"], rows)


def header(results: dict) -> str:
    cfg = results.get("config") or {}
    decoding = "sampling (T={})".format(fmt(cfg.get("temperature"))) if cfg.get("do_sample") else "greedy"
    facts = [f"model {code(results.get('model', '?'))}", f"seed {fmt(results.get('seed', '?'))}",
             f"held-out {fmt(results['heldout']['rows'])} rows / {fmt(results['heldout']['tokens'])} tokens",
             f"decoding {decoding}, max_new_tokens {fmt(cfg.get('max_new_tokens', '?'))}",
             f"bootstrap resamples {fmt(cfg.get('bootstrap_resamples'))}"]
    return "# SFT evaluation report\n\n" + _verdict(results) + "\n\n" + " · ".join(facts)


def image_refs(images: dict[str, str]) -> str:
    """Reference definitions for the embedded images (``{file name: data URI}``), kept at the end."""
    return "\n".join(f"[{name}]: {uri}" for name, uri in images.items())


def build_markdown(results: dict, run: dict, images: dict[str, str]) -> str:
    """The whole report; ``images`` maps the PNG file names present to their data URIs."""
    parts = [header(results), summary_section(results)]
    if constants.METRIC_DELTAS_FILE in images:
        parts.append(image(constants.METRIC_DELTAS_FILE))
    parts += [part for part in (examples_section(results),) if part]
    benches = results.get("benchmarks") or [n for n in ("ifeval",) if n in results]
    parts += [gate_section(results), data_section(run, set(images)), training_section(run, set(images))]
    parts += [bench_section(results, name) for name in benches]
    parts += [part for part in (more_answers_section(results),) if part]
    if images:
        parts.append(image_refs(images))
    return "\n\n".join(parts) + "\n"
