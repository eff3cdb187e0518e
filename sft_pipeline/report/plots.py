"""Report plots (matplotlib, headless): metric bars base vs tuned, and a loss-curve fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# Metrics in [0, 1] drawn as grouped bars; losses go to a second panel.
RATE_METRICS = ("ifeval_prompt_strict", "ifeval_inst_strict", "ifeval_prompt_loose", "ifeval_inst_loose",
                "stop_rate", "repetition_rate", "sycophantic_rate", "too_short_rate")
LOSS_METRICS = ("heldout_loss",)
COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4"}
BAR_WIDTH = 0.38
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, names: Sequence[str], metrics: dict, title: str) -> None:
    xs = range(len(names))
    for offset, side in ((-BAR_WIDTH / 2, "base"), (BAR_WIDTH / 2, "tuned")):
        values = [metrics[side].get(n) or 0.0 for n in names]
        bars = ax.bar([x + offset for x in xs], values, BAR_WIDTH, label=side, color=COLORS[side])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n.replace("ifeval_", "IFEval ").replace("_", " ") for n in names],
                       rotation=35, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def metric_bars(metrics: dict[str, dict[str, Any]], out: Path) -> Path:
    """Grouped bars base vs tuned: rates on the left, held-out loss on the right."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [4, 1]})
    _bars(left, RATE_METRICS, metrics, "Rates (higher is better for IFEval and stop rate)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    _bars(right, LOSS_METRICS, metrics, "Held-out loss (lower is better)")
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
