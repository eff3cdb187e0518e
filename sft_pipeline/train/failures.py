"""Failure policy of the train stage: out-of-memory back-off and transient-error detection.

* Out of memory: retry with a smaller micro-batch and proportionally more gradient
  accumulation, so the effective batch (and so the run) stays the same, down to a
  micro-batch of 1; then give up with one clear :class:`PipelineError`.
* Transient errors (network, interconnect): :func:`is_transient` tells the Prefect
  task's ``retry_condition_fn`` which failures a retry with back-off may fix.
  Everything else (bad config, missing model or data, OOM at micro-batch 1) fails
  at once.
"""

from __future__ import annotations

from typing import Iterator

import torch
from accelerate.utils.memory import should_reduce_batch_size

from sft_pipeline.errors import PipelineError

# Substrings of RuntimeError messages from flaky hardware or interconnects.
TRANSIENT_MESSAGES = ("NCCL", "ECC error", "unspecified launch failure", "Connection reset", "timed out")
RETRYABLE_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RankOutOfMemory(RuntimeError):
    """One rank of several ran out of memory while training; only the launcher can back off."""


class RankFailure(RuntimeError):
    """A launched rank failed; ``transient`` is the rank's own :func:`is_transient` verdict on its error."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def is_oom(exc: BaseException) -> bool:
    """True for an accelerator (or CPU allocator) out-of-memory error.

    >>> is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    >>> is_oom(RuntimeError("shape mismatch"))
    False
    """
    return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)


def smaller_micro_batch(micro: int, effective: int) -> int | None:
    """The next micro-batch after an OOM: the largest divisor of ``effective`` at most half of ``micro``.

    Powers of two simply halve; the effective batch always stays a whole multiple.

    >>> smaller_micro_batch(8, 32), smaller_micro_batch(6, 12), smaller_micro_batch(3, 12), smaller_micro_batch(1, 4)
    (4, 3, 1, None)
    """
    for candidate in range(micro // 2, 0, -1):
        if effective % candidate == 0:
            return candidate
    return None


def batch_schedule(micro: int, accumulation: int) -> Iterator[tuple[int, int]]:
    """(micro-batch, gradient accumulation) pairs to try, all with the same effective batch.

    >>> list(batch_schedule(4, 2))
    [(4, 2), (2, 4), (1, 8)]
    >>> list(batch_schedule(1, 16))
    [(1, 16)]
    """
    effective = micro * accumulation
    current: int | None = micro
    while current is not None:
        yield current, effective // current
        current = smaller_micro_batch(current, effective)


def oom_exhausted(cfg) -> PipelineError:
    """The error once even a micro-batch of 1 ran out of memory (``cfg``: the train section)."""
    effective = cfg.batch_size * cfg.gradient_accumulation
    return PipelineError(
        f"train: out of memory even at micro-batch 1 (effective batch {effective}); "
        "use a smaller model, train.method=qlora, train.gradient_checkpointing=true or a shorter tokenize.max_length"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient_one(exc: BaseException) -> bool:
    import httpx
    import requests

    if isinstance(exc, (ConnectionError, TimeoutError, httpx.TransportError, requests.ConnectionError,
                        requests.Timeout)):
        return True
    if _http_status(exc) in RETRYABLE_HTTP_STATUS:
        return True
    if type(exc).__name__ == "DistBackendError":  # torch.distributed (NCCL) failures
        return True
    return isinstance(exc, RuntimeError) and not is_oom(exc) and any(m in str(exc) for m in TRANSIENT_MESSAGES)


def is_transient(exc: BaseException) -> bool:
    """True when retrying the train task later may succeed (for Prefect's ``retry_condition_fn``).

    The whole cause chain is inspected, so a network error wrapped in another error counts.

    >>> is_transient(ConnectionResetError("peer closed")), is_transient(TimeoutError())
    (True, True)
    >>> is_transient(FileNotFoundError("model.safetensors")), is_transient(torch.OutOfMemoryError("out of memory."))
    (False, False)
    >>> is_transient(RuntimeError("NCCL error: unhandled system error"))
    True
    """
    for item in _chain(exc):
        if isinstance(item, RankFailure):
            return item.transient  # judged where the error was raised, with its type and cause
        if _is_transient_one(item):
            return True
    return False
