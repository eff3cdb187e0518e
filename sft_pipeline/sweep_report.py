"""The sweep's report: one row per branch, paired intervals against the base model and against the
config's own branch, a plot of the primary metric's paired change against the base, the recommendation,
and, with random controls, whether each setting beats its control."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from sft_pipeline.escape import code
from sft_pipeline.evaluate.benchmarks import BENCHMARKS
from sft_pipeline.evaluate.metrics import compare, metric_table
from sft_pipeline.files import write_json
from sft_pipeline.sweep import Branch, BranchRow, Recommendation, against_random, read_results, recommend

SWEEP_MD, SWEEP_HTML, SWEEP_JSON, SWEEP_PLOT = "sweep.md", "sweep.html", "sweep.json", "sweep_primary.png"
TUNED, BASE = "tuned", "base"
CONTROL_NOTE = ("Each random control kept as many rows as its setting, drawn at random from every scored row "
                "(`filter.random_rows`, seeded by `run.seed`), and was trained and evaluated exactly as the settings "
                "were (same steps, seed, held-out rows and prompts). *beats random*: the paired 95 % interval of "
                "setting minus control lies wholly on the good side of 0; *worse than random*: wholly on the bad "
                "side; *indistinguishable from random*: it contains 0.")


def metrics_of(results: dict) -> tuple:
    titles = {b.name: b.title for b in BENCHMARKS}
    return metric_table([(name, titles.get(name, name)) for name in results.get("benchmarks", [])])


def versus(a: dict, b: dict, *, side_a: str, resamples: int, seed: int) -> dict[str, dict]:
    """Paired comparison of model ``b``'s tuned side with model ``a``'s ``side_a`` (base or tuned), per metric.

    Both evaluations answered the same items (same held-out rows and prompts, in the same order).
    """
    items = {name: {"base": cell[side_a], "tuned": b["items"][name][TUNED], "weights": cell["weights"]}
             for name, cell in a["items"].items() if name in b["items"]}
    return compare(metrics_of(a), a["metrics"][side_a], b["metrics"][TUNED], items, resamples=resamples, seed=seed)


def branch_row(branch: Branch, filter_counts: dict, results: dict, current: dict, *, resamples: int,
               seed: int) -> BranchRow:
    points = {e["metric"]: e for e in results.get("comparison") or []}
    return BranchRow(branch, int(filter_counts.get("rows_kept", 0)), int(filter_counts.get("tokens_kept", 0)),
                     results["gate"]["verdict"], metrics=points,
                     versus_base=versus(results, results, side_a=BASE, resamples=resamples, seed=seed),
                     versus_current=versus(current, results, side_a=TUNED, resamples=resamples, seed=seed))


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _cell(entry: dict | None) -> str:
    """``+0.012 [-0.004, +0.031] better``."""
    if not entry or entry.get("delta") is None:
        return "–"
    verdict = entry.get("verdict") or ""
    short = {"no significant change": "n.s."}.get(verdict, verdict)
    return f"{entry['delta']:+.3f} [{_num(entry.get('low'))}, {_num(entry.get('high'))}] {short}".strip()


def metric_label(rows: Sequence[BranchRow], primary: str) -> str:
    """The primary metric's readable name, as the evaluation reported it."""
    return (rows[0].metrics.get(primary) or {}).get("label", primary) if rows else primary


def markdown(rows: Sequence[BranchRow], rec: Recommendation, primary: str, *, steps: int, heldout: int,
             command: str, plot_uri: str | None) -> str:
    label = metric_label(rows, primary)
    head = ["setting", "rows kept", "tokens kept (est.)", f"{label} (tuned)", "vs base (95 % CI)",
            "vs current setting (95 % CI)", "gate"]
    lines = [f"# Filter sweep: {len(rows)} branches, {steps} training steps each", "",
             f"**{rec.sentence}**", "",
             f"Every branch trained {steps} steps with the same seed and schedule, and was evaluated on the same "
             f"{heldout:,} held-out rows (drawn before filtering) and prompts. Intervals are paired bootstrap 95 % "
             "intervals; n.s. = no significant change.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r.metrics.get(primary) or {}
        value = f"{_num(m.get('tuned'))} [{_num(m.get('tuned_low'))}, {_num(m.get('tuned_high'))}]"
        current = "(current)" if r.branch.current else _cell(r.versus_current.get(primary))
        name = f"{r.branch.name}{' ★' if r.branch == rec.best else ''}{' (random control)' * r.branch.is_control}"
        lines.append(f"| {name} | {r.rows_kept:,} | "
                     f"{r.tokens_kept:,} | {value} | {_cell(r.versus_base.get(primary))} | {current} | "
                     f"{r.verdict or '–'} |")
    lines += ["", "Other metrics, tuned minus base (95 % CI), one column per setting:", ""]
    others = [k for k in (rows[0].versus_base if rows else {}) if k != primary]
    lines += ["| metric | " + " | ".join(r.branch.name for r in rows) + " |", "|---|" + "---|" * len(rows)]
    lines += [f"| {k} | " + " | ".join(_cell(r.versus_base.get(k)) for r in rows) + " |" for k in others]
    lines += control_section(rows, primary, label)
    lines += ["", f"Command: {code(command)}"]
    if plot_uri:
        lines += ["", f"![{label}: change against the base model, by setting]({plot_uri})"]
    return "\n".join(lines) + "\n"


def control_section(rows: Sequence[BranchRow], primary: str, label: str) -> list[str]:
    """Each setting against its random control on the primary metric (no lines when the sweep has none)."""
    paired = [r for r in rows if r.control is not None]
    if not paired:
        return []
    head = ["setting", "rows kept", "random control", f"{label}: setting", "control", "setting - control (95 % CI)",
            "against random"]
    lines = ["", "## Does each setting beat random rows?", "", CONTROL_NOTE, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in paired:
        entry = r.versus_control.get(primary)
        lines.append(f"| {r.branch.name} | {r.rows_kept:,} | {r.control.name} | {_num((entry or {}).get('tuned'))} | "
                     f"{_num((entry or {}).get('base'))} | {_cell(entry)} | {against_random(entry)} |")
    return lines


def plot(rows: Sequence[BranchRow], primary: str, label: str, out: Path) -> Path:
    """The primary metric's paired change against the base model per setting, with its 95 % interval.

    Paired deltas, not each branch's own interval: every branch answered the same items, so the per-item spread
    that makes absolute intervals wide (hard and easy rows) cancels, and what the table calls significant shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    rows = [r for r in rows if not r.branch.is_control]  # a row count, not a setting: compared in their own table
    for kind in dict.fromkeys(r.branch.kind for r in rows):
        pts = [(r.branch.value, r.versus_base[primary]) for r in rows
               if r.branch.kind == kind and (r.versus_base.get(primary) or {}).get("delta") is not None]
        ys = [e["delta"] for _, e in pts]
        err = [[y - (e.get("low") if e.get("low") is not None else y) for y, (_, e) in zip(ys, pts)],
               [(e.get("high") if e.get("high") is not None else y) - y for y, (_, e) in zip(ys, pts)]]
        ax.errorbar([x for x, _ in pts], ys, yerr=err, marker="o", capsize=4, label=f"tuned - base, by {kind}")
    ax.axhline(0.0, color="grey", linestyle="--", label="no change from the base model")
    ax.set_xlabel("filter setting")
    ax.set_ylabel(f"{label}\ntuned - base (paired 95 % CI)", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write(out_dir: Path, rows: Sequence[BranchRow], primary: str, direction: int, *, steps: int, heldout: int,
          command: str, resamples: int, seed: int, results: dict[str, dict]) -> Recommendation:
    """Write sweep.md, sweep.html, sweep.json and the plot into ``out_dir``; return the recommendation."""
    from sft_pipeline.report.html import data_uri, markdown_to_html

    def interval(a: BranchRow, b: BranchRow):
        entry = versus(results[a.branch.name], results[b.branch.name], side_a=TUNED, resamples=resamples,
                       seed=seed).get(primary) or {}
        return None if entry.get("low") is None else (entry["low"], entry["high"])

    rec = recommend(rows, primary, direction, interval)
    image = plot(rows, primary, metric_label(rows, primary), out_dir / SWEEP_PLOT) if rows else None
    text = markdown(rows, rec, primary, steps=steps, heldout=heldout, command=command,
                    plot_uri=data_uri(image) if image else None)
    (out_dir / SWEEP_MD).write_text(text, encoding="utf-8")
    (out_dir / SWEEP_HTML).write_text(markdown_to_html(text), encoding="utf-8")
    write_json(out_dir / SWEEP_JSON, {"recommended": rec.best.name if rec.best else None,
                                      "indistinguishable": [b.name for b in rec.indistinguishable],
                                      "sentence": rec.sentence,
                                      "branches": [{"setting": r.branch.name, "rows_kept": r.rows_kept,
                                                    "tokens_kept": r.tokens_kept, "verdict": r.verdict,
                                                    "versus_base": r.versus_base, "versus_current": r.versus_current,
                                                    **control_fields(r, primary)}
                                                   for r in rows]})
    return rec


def control_fields(row: BranchRow, primary: str) -> dict:
    """A branch's random control in sweep.json: its name, the comparison of the branch minus the control, and what
    it says on the primary metric (nothing for a branch without a control)."""
    if row.control is None:
        return {}
    return {"random_control": row.control.name, "versus_random_control": row.versus_control,
            "against_random": against_random(row.versus_control.get(primary))}


def add_controls(rows: Sequence[BranchRow], controls: dict[str, str], by_name: dict[str, Branch], results: dict,
                 *, resamples: int, seed: int) -> None:
    """Give each setting's row its random control and the paired comparison of the setting minus the control."""
    for r in rows:
        name = controls.get(r.branch.name)
        if name is not None:
            r.control = by_name[name]
            r.versus_control = versus(results[name], results[r.branch.name], side_a=TUNED, resamples=resamples,
                                      seed=seed)


def build(cfg, branches: Sequence[Branch], stage_results: dict, heldout, command: str,
          controls: dict[str, str] | None = None) -> dict:
    """Read each branch's evaluation, compare, and write the report under ``<output root>/sweep/<key16>/``.

    ``stage_results`` maps a branch name to its ``{stage: StageResult}``; ``controls`` a setting's name to its
    random control's (a branch too). Returns the markdown, the folder and a small summary (recommendation,
    per-branch verdicts, and each setting against its random control).
    """
    from sft_pipeline import cache, storage
    from sft_pipeline.artifacts import code_version, json_digest
    from sft_pipeline.constants import STAGE_EVALUATE, STAGE_FILTER
    from sft_pipeline.files import atomic_dir
    from sft_pipeline.stages import KEY_CHARS

    evals = {b.name: stage_results[b.name][STAGE_EVALUATE] for b in branches}
    results = {name: read_results(cache.output_folder(cfg, r)) for name, r in evals.items()}
    current = next(b for b in branches if b.current)
    resamples, seed = cfg.eval.bootstrap_resamples, cfg.run.seed
    rows = [branch_row(b, stage_results[b.name][STAGE_FILTER].counts, results[b.name], results[current.name],
                       resamples=resamples, seed=seed) for b in branches]
    add_controls(rows, controls or {}, {b.name: b for b in branches}, results, resamples=resamples, seed=seed)
    primary = cfg.eval.gate.primary_metric or "heldout_loss"
    direction = (rows[0].metrics.get(primary) or {}).get("direction", -1)
    key = json_digest({"branches": {n: r.key for n, r in evals.items()}, "primary": primary,
                       "code": code_version(__name__)})
    out = storage.store_of(cfg.run).folder(f"sweep/{key[:KEY_CHARS]}")
    drawn, cap = heldout.counts.get("heldout_rows", 0), cfg.eval.max_heldout_rows
    with atomic_dir(out) as tmp:  # the rows the loss is measured on: evaluation reads at most ``cap`` of them
        rec = write(tmp, rows, primary, direction, steps=cfg.train.max_steps, heldout=min(drawn, cap or drawn),
                    command=command, resamples=resamples, seed=seed, results=results)
    text = (out / SWEEP_MD).read_text()
    summary = {"out_dir": str(out), "recommended": rec.best.name if rec.best else None,
               "overrides": rec.best.overrides() if rec.best else [], "sentence": rec.sentence,
               "verdicts": {r.branch.name: r.verdict for r in rows},
               "against_random": {r.branch.name: against_random(r.versus_control.get(primary))
                                  for r in rows if r.control is not None}}
    return {"markdown": text, "summary": summary}
