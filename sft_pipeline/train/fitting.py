"""Before each training attempt: its estimated peak memory, and gradient checkpointing where it would not fit.

:func:`plan_memory` runs for every attempt (so for each micro-batch the out-of-memory back-off
tries). It plans the model on the meta device (:func:`~sft_pipeline.train.memory.plan_model`),
estimates the attempt's peak (:func:`~sft_pipeline.train.memory.estimate_peak`) and logs it. On
CUDA, in a single process, with ``train.auto_checkpointing`` (the default) and checkpointing
off, an attempt whose estimate exceeds :data:`FIT_FRACTION` of the GPU's free memory trains
with gradient checkpointing on (:func:`needs_checkpointing`); on a CPU nothing changes. The
estimate, the free memory and the decision go into ``metrics.json`` (``memory_estimate``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from sft_pipeline.train import ranks
from sft_pipeline.train.activations import Workload
from sft_pipeline.train.levers import VARLEN_ATTENTION, Levers
from sft_pipeline.train.memory import Estimate, estimate_peak, plan_model
from sft_pipeline.train.metrics import CUDA_PEAK_KIND

log = logging.getLogger(__name__)

# Of the free GPU memory, the share an estimate may fill: the caching allocator's rounding and
# fragmentation, and the CUDA kernels' workspaces, need the rest.
FIT_FRACTION = 0.9
GIB = 2**30
# What planning a model on the meta device may raise for an architecture it cannot build there.
PLANNING_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, NotImplementedError,
                   StopIteration)


def needs_checkpointing(estimated_peak: int, free: int, fit_fraction: float = FIT_FRACTION) -> bool:
    """Whether an attempt estimated to peak at ``estimated_peak`` bytes, checkpointing off, would not fit ``free``.

    >>> needs_checkpointing(80 * GIB, 139 * GIB), needs_checkpointing(80 * GIB, 79 * GIB)
    (False, True)
    """
    return estimated_peak > fit_fraction * free


@dataclass(frozen=True)
class MemoryPlan:
    """One attempt's levers (checkpointing possibly switched on), estimate and free GPU memory."""

    levers: Levers
    estimate: Estimate | None = None
    free_bytes: int | None = None
    switched_on: bool = False
    without_checkpointing: Estimate | None = None  # the estimate that made it switch

    def record(self) -> dict | None:
        """``metrics.json``'s ``memory_estimate``; None when the model could not be planned."""
        if self.estimate is None:
            return None
        out = {**self.estimate.as_dict(), "free_bytes": self.free_bytes, "checkpointing_switched_on": self.switched_on}
        if self.without_checkpointing is not None:
            out["peak_bytes_without_checkpointing"] = self.without_checkpointing.peak
        return out


def workload(data, micro_batch: int, levers: Levers, *, cuda: bool, checkpointing: bool) -> Workload:
    """The estimate's view of an attempt: micro-batch of the longest rows, supervised share, kernels."""
    return Workload(
        micro_batch=micro_batch, row_tokens=data.max_row_tokens,
        supervised_fraction=data.supervised_tokens / max(data.tokens, 1), checkpointing=checkpointing, cuda=cuda,
        attention=levers.attn_implementation,
        dense_mask=levers.attn_implementation not in VARLEN_ATTENTION and (micro_batch > 1 or data.packed
                                                                            or levers.padding_free),
    )


def _model_plan(job, compute: torch.dtype, cuda: bool):
    from transformers import AutoConfig

    from sft_pipeline.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(job.model), revision=job.model.revision,
                                        trust_remote_code=job.model.trust_remote_code)
    return plan_model(config, job.train.method, job.train.lora, compute, "cuda" if cuda else "cpu",
                      trust_remote_code=job.model.trust_remote_code)


def plan_memory(job, data, micro_batch: int, levers: Levers, *, cuda: bool | None = None,
                free: int | None = None) -> MemoryPlan:
    """Estimate this attempt's peak memory; on CUDA switch checkpointing on when it would not fit (logged)."""
    from sft_pipeline.models import compute_dtype

    cuda = torch.cuda.is_available() if cuda is None else cuda
    compute = compute_dtype()
    try:
        plan = _model_plan(job, compute, cuda)
    except PLANNING_ERRORS as exc:  # the estimate is advice: a model it cannot plan still trains
        log.warning("no memory estimate for %s: %s", job.model.name_or_path, str(exc).splitlines()[0] if str(exc) else
                    type(exc).__name__)
        return MemoryPlan(levers)

    def estimate(checkpointing: bool) -> Estimate:
        work = workload(data, micro_batch, levers, cuda=cuda, checkpointing=checkpointing)
        return estimate_peak(plan.parameters, plan.architecture, work, method=job.train.method, compute=compute,
                             lora=job.train.lora)

    current = estimate(levers.gradient_checkpointing)
    if cuda and free is None:
        free = torch.cuda.mem_get_info()[0]
    may_switch = cuda and job.train.auto_checkpointing and not levers.gradient_checkpointing and \
        ranks.world_size() == 1
    if may_switch and needs_checkpointing(current.peak, free):
        checkpointed = estimate(True)
        log.warning("memory estimate %.1f GiB exceeds %.0f %% of the free %.1f GiB: gradient checkpointing on "
                    "(train.auto_checkpointing)%s", current.peak / GIB, FIT_FRACTION * 100, free / GIB,
                    "" if not needs_checkpointing(checkpointed.peak, free) else
                    "; still over, the out-of-memory back-off may halve the micro-batch")
        result = MemoryPlan(replace(levers, gradient_checkpointing=True), checkpointed, free, True, current)
    else:
        result = MemoryPlan(levers, current, free)
    log.info("memory estimate: %s%s", result.estimate.summary(),
             f"; free GPU memory {free / GIB:.1f} GiB" if free is not None else "")
    return result


def measured_line(metrics: dict) -> str:
    """After training: the measured peak beside the estimate.

    On CUDA both count tensors (``max_memory_allocated``); a CPU's peak RSS is the whole process's
    (interpreter, libraries, data, earlier attempts), so it is shown without a ratio.

    >>> measured_line({"peak_memory_bytes": 3 * GIB, "peak_memory_kind": "cuda_max_allocated",
    ...                "memory_estimate": {"peak_bytes": 2 * GIB}})
    'peak memory 3.00 GiB (cuda_max_allocated), estimated 2.00 GiB (measured / estimated 1.50)'
    >>> measured_line({"peak_memory_bytes": 3 * GIB, "peak_memory_kind": "process_peak_rss",
    ...                "memory_estimate": {"peak_bytes": 2 * GIB}})
    'peak memory 3.00 GiB (process_peak_rss: the whole process), estimated 2.00 GiB of training tensors'
    """
    measured, estimate = metrics["peak_memory_bytes"], (metrics.get("memory_estimate") or {}).get("peak_bytes")
    kind = metrics["peak_memory_kind"]
    if kind != CUDA_PEAK_KIND:
        kind += ": the whole process"
    line = f"peak memory {measured / GIB:.2f} GiB ({kind})"
    if estimate and metrics["peak_memory_kind"] == CUDA_PEAK_KIND:
        return line + f", estimated {estimate / GIB:.2f} GiB (measured / estimated {measured / estimate:.2f})"
    return line + (f", estimated {estimate / GIB:.2f} GiB of training tensors" if estimate else "")
