"""Report plots (matplotlib, headless): metric bars base vs tuned with interval error bars, loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

LOSS_METRICS = ("heldout_loss",)
COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4"}
BAR_WIDTH = 0.38
DPI = 110
ERROR_STYLE = {"ecolor": "#333333", "capsize": 2, "elinewidth": 0.8}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_bars(entries: Sequence[dict], side: str) -> list[list[float]] | None:
    """Distances from each value down to its interval's low end and up to its high end (None: no intervals).

    >>> [[round(x, 3) for x in r] for r in error_bars([{"base": 0.5, "base_low": 0.4, "base_high": 0.7}], "base")]
    [[0.1], [0.2]]
    >>> error_bars([{"base": 0.5}], "base") is None
    True
    """
    if not all(e.get(f"{side}_low") is not None for e in entries):
        return None
    return [[max(0.0, e[side] - e[f"{side}_low"]) for e in entries],
            [max(0.0, e[f"{side}_high"] - e[side]) for e in entries]]


def _bars(ax, entries: dict[str, dict], names: Sequence[str], title: str) -> None:
    shown = [entries[n] for n in names]
    xs = range(len(names))
    for offset, side in ((-BAR_WIDTH / 2, "base"), (BAR_WIDTH / 2, "tuned")):
        values = [e.get(side) or 0.0 for e in shown]
        yerr = error_bars(shown, side) if all(e.get(side) is not None for e in shown) else None
        bars = ax.bar([x + offset for x in xs], values, BAR_WIDTH, label=side, color=COLORS[side], yerr=yerr,
                      error_kw=ERROR_STYLE)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([entries[n].get("label", n) for n in names], rotation=35, ha="right", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def metric_bars(entries: dict[str, dict], out: Path) -> Path:
    """Grouped bars base vs tuned with 95 % interval error bars: rates left, held-out loss right."""
    plt = _pyplot()
    rates = [n for n, e in entries.items() if e.get("rate")]
    losses = [n for n in LOSS_METRICS if n in entries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [5, 1]})
    _bars(left, entries, rates, "Rates (error bars: 95 % bootstrap intervals)")
    left.set_ylim(0, 1.05)
    left.legend(fontsize=8)
    _bars(right, entries, losses, "Held-out loss\n(lower is better)")
    fig.tight_layout()
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
