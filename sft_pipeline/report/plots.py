"""Report plots (matplotlib, headless): each metric's paired delta with its 95 % interval, the loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sft_pipeline.verdicts import BETTER, NO_CHANGE, WORSE

LOSS_METRICS = ("heldout_loss",)
VERDICT_COLORS = {BETTER: "#2ca02c", WORSE: "#d62728", NO_CHANGE: "#7f7f7f", None: "#1f77b4"}
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def deltas(entries: Sequence[dict]) -> tuple[list[float], list[list[float]]]:
    """Each entry's delta and its distances down to the interval's low end and up to its high end (0 without one).

    >>> deltas([{"delta": 0.1, "low": 0.05, "high": 0.2}, {"delta": -0.3}])
    ([0.1, -0.3], [[0.05, 0.0], [0.1, 0.0]])
    """
    points = [e.get("delta") or 0.0 for e in entries]
    low = [p - e["low"] if e.get("low") is not None else 0.0 for p, e in zip(points, entries)]
    high = [e["high"] - p if e.get("high") is not None else 0.0 for p, e in zip(points, entries)]
    return points, [[round(x, 12) for x in low], [round(x, 12) for x in high]]


def _label(entry: dict, name: str) -> str:
    cut = [side for side in ("base", "tuned") if entry.get(f"mostly_cut_{side}")]
    return entry.get("label", name) + (f"  [cut: {'+'.join(cut)}]" if cut else "")


def _forest(ax, entries: dict[str, dict], names: Sequence[str], title: str, unit: str, scale: float) -> None:
    """One row per metric: the paired delta (dot) and its 95 % interval (bar), coloured by its verdict."""
    shown = [entries[n] for n in names]
    points, (low, high) = deltas(shown)
    ys = list(range(len(names)))[::-1]
    for y, p, lo, hi, e in zip(ys, points, low, high, shown):
        color = VERDICT_COLORS.get(e.get("verdict"), VERDICT_COLORS[None])
        ax.errorbar([p * scale], [y], xerr=[[lo * scale], [hi * scale]], fmt="o", color=color, ecolor=color,
                    capsize=3, markersize=4)
    ax.axvline(0.0, color="#555555", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([_label(entries[n], n) for n in names], fontsize=7)
    ax.set_xlabel(f"tuned - base ({unit}); right of 0 is higher", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def delta_plot(entries: dict[str, dict], out: Path) -> Path:
    """Each metric's paired delta with its 95 % interval: rates (percentage points) left, held-out loss right.

    Per-model bars with their own intervals hide significant paired differences (the items' difficulty
    spreads both bars); the paired interval is the one the verdicts and the gate read.
    """
    plt = _pyplot()
    rates = [n for n, e in entries.items() if e.get("rate")]
    losses = [n for n in LOSS_METRICS if n in entries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.32 * max(len(rates), 4) + 1.4),
                                      gridspec_kw={"width_ratios": [3, 2]})
    _forest(left, entries, rates, "Rates: paired change with 95 % interval", "percentage points", 100.0)
    _forest(right, entries, losses, "Held-out loss: lower is better", "nats per token", 1.0)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=v or "no verdict")
               for v, c in VERDICT_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def loss_curve(steps: Sequence[int], losses: Sequence[float], out: Path) -> Path:
    """Training loss per logged step (used when the train stage wrote no PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
