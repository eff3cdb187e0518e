"""Failure policy of the train stage: out-of-memory back-off and transient-error detection.

* Out of memory: :func:`back_off` retries with a smaller micro-batch and proportionally
  more gradient accumulation, so the effective batch (and so the run) stays the same,
  down to a micro-batch of 1; then gives up with one clear :class:`PipelineError`. The
  same driver runs training in this process and relaunches ranks.
* Transient errors (network, interconnect): :func:`is_transient` tells the Prefect
  task's ``retry_condition_fn`` which failures a retry with back-off may fix.
  Everything else (bad config, missing model or data, OOM at micro-batch 1) fails
  at once.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, TypeVar

import torch
from accelerate.utils.memory import should_reduce_batch_size

from sft_pipeline.errors import PipelineError
from sft_pipeline.train.job import OUTCOME_OK, OUTCOME_OOM, Batch

log = logging.getLogger(__name__)
Result = TypeVar("Result")

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


def batch_schedule(first: Batch) -> Iterator[Batch]:
    """Batch shapes to try, all with the same effective batch, starting at ``first``.

    >>> [(b.micro, b.accumulation) for b in batch_schedule(Batch(4, 2))]
    [(4, 2), (2, 4), (1, 8)]
    >>> list(batch_schedule(Batch(1, 16)))
    [Batch(micro=1, accumulation=16)]
    """
    current: int | None = first.micro
    while current is not None:
        yield Batch(current, first.effective // current)
        current = smaller_micro_batch(current, first.effective)


def oom_exhausted(first: Batch) -> PipelineError:
    """The error once even a micro-batch of 1 ran out of memory."""
    return PipelineError(
        f"train: out of memory even at micro-batch 1 (effective batch {first.effective}); "
        "use a smaller model, train.method=qlora, train.gradient_checkpointing=true or a shorter tokenize.max_length"
    )


def back_off(first: Batch, attempt: Callable[[Batch], Result],
             release: Callable[[], None] = lambda: None) -> tuple[Result, list[dict]]:
    """``attempt(batch)`` at ``first``, then at smaller micro-batches while it runs out of memory.

    Returns the successful attempt's result and every attempt's record (``Batch.record``).
    Any other error is raised at once. ``release`` runs between attempts, after the failed
    attempt's frames are gone, to give its memory back.
    """
    records: list[dict] = []
    for batch in batch_schedule(first):
        try:
            result = attempt(batch)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried here
            if not is_oom(exc):
                raise
            records.append(batch.record(OUTCOME_OOM))
            log.warning("out of memory at micro-batch %d; retrying with a smaller one", batch.micro)
        else:
            records.append(batch.record(OUTCOME_OK))
            return result, records
        release()
    raise oom_exhausted(first)


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
    if isinstance(exc, PipelineError):  # one line a retry cannot change (bad input, a full disk)
        return False
    for item in _chain(exc):
        if isinstance(item, RankFailure):
            return item.transient  # judged where the error was raised, with its type and cause
        if _is_transient_one(item):
            return True
    return False
