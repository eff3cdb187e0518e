"""Training measurements: token counts, throughput, peak memory, MFU and the loss curve."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sft_pipeline.constants import IGNORE_INDEX

# Dense bf16 tensor-core peak FLOP/s by device-name substring; the first match wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)
FLOPS_PER_PARAM_TOKEN = 6  # forward + backward, the usual 6·N·tokens estimate
RSS_UNIT_BYTES = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
CUDA_PEAK_KIND = "cuda_max_allocated"  # tensors only (no CUDA context, no allocator cache)
RSS_PEAK_KIND = "process_peak_rss"  # the whole process since it started: interpreter, libraries, data, tensors


@dataclass
class TokenCounter:
    """Non-pad and supervised tokens of the micro-batches actually trained on."""

    non_pad: int = 0
    supervised: int = 0
    _pending: list = field(default_factory=list, repr=False)

    def add(self, inputs: dict) -> None:
        """Count one collated micro-batch (kept as tensors; synchronised once in :meth:`totals`)."""
        mask = inputs.get("attention_mask")
        non_pad = mask.sum() if mask is not None else torch.tensor(inputs["input_ids"].numel())
        self._pending.append((non_pad, (inputs["labels"] != IGNORE_INDEX).sum()))

    def totals(self) -> tuple[int, int]:
        for non_pad, supervised in self._pending:
            self.non_pad += int(non_pad)
            self.supervised += int(supervised)
        self._pending.clear()
        return self.non_pad, self.supervised


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of a known accelerator, None otherwise (e.g. the CPU).

    >>> peak_flops("NVIDIA H100 80GB HBM3"), peak_flops("NVIDIA H100 PCIe"), peak_flops("cpu")
    (989000000000000.0, 756000000000000.0, None)
    """
    for needle, flops in PEAK_BF16_FLOPS:
        if device_name and needle in device_name:
            return flops
    return None


def model_flops_utilisation(n_params: int, tokens: int, seconds: float, peak: float | None) -> float | None:
    """6·N·tokens / time / peak; None when the peak is unknown or nothing was timed.

    >>> model_flops_utilisation(1_000_000, 1_000, 1.0, 12e9)
    0.5
    >>> model_flops_utilisation(1_000_000, 1_000, 1.0, None) is None
    True
    """
    if not peak or seconds <= 0:
        return None
    return FLOPS_PER_PARAM_TOKEN * n_params * tokens / seconds / peak


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated since the last reset, else the process's peak RSS."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), CUDA_PEAK_KIND
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT_BYTES), RSS_PEAK_KIND


def count_parameters(model) -> int:
    """All parameters, counting 4-bit packed weights at their unpacked size (as PEFT does)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return int(model.get_nb_trainable_parameters()[1])
    return int(model.num_parameters())


def loss_history(log_history: list[dict]) -> list[dict]:
    """Per-step training logs (loss, learning rate, grad norm) from ``TrainerState.log_history``.

    >>> loss_history([{"loss": 2.0, "step": 1, "learning_rate": 1e-3}, {"train_runtime": 1.0, "step": 1}])
    [{'step': 1, 'loss': 2.0, 'learning_rate': 0.001}]
    """
    keep = ("loss", "learning_rate", "grad_norm", "num_tokens", "mean_token_accuracy")
    return [
        {"step": entry["step"], **{k: entry[k] for k in keep if k in entry}}
        for entry in log_history
        if "loss" in entry and "step" in entry
    ]


def plot_loss_curve(history: list[dict], path: Path, title: str) -> None:
    """Loss against step as a PNG (Agg backend, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="." if len(history) < 50 else None)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
