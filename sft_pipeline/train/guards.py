"""What training must not publish or repeat: diverged numbers, and steps past the configured end.

* :class:`FiniteGuard` stops training with one :class:`NonFiniteError` line (step and value)
  as soon as a logged loss or gradient norm is NaN or infinite; the saved weights are
  checked too (``models.check_finite_tensors``) before the stage returns. A diverged
  run is deterministic: it is not retried.
* :class:`StopWhenComplete`: HF ``Trainer`` resumed from a checkpoint taken at the last
  step still runs one more step before it looks at ``max_steps``. The guard stops it
  before that step; :func:`finished_output` stands in for ``train()``'s return value.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback
from transformers.trainer_utils import TrainOutput

from sft_pipeline.models import NonFiniteError

log = logging.getLogger(__name__)

WATCHED_LOGS = ("loss", "grad_norm")  # logged values that must stay finite
TRAIN_RUNTIME = "train_runtime"


class TrainingComplete(Exception):
    """Raised before the first step of a run resumed from its final checkpoint: nothing is left to train."""


def first_non_finite(logs: dict, keys=WATCHED_LOGS) -> tuple[str, float] | None:
    """The first watched ``(key, value)`` that is NaN or infinite, else None.

    >>> first_non_finite({"loss": 1.5, "grad_norm": float("nan")}), first_non_finite({"loss": 0.2})
    (('grad_norm', nan), None)
    """
    for key in keys:
        value = logs.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return key, value
    return None


class FiniteGuard(TrainerCallback):
    """Fail the run at the first non-finite loss or gradient norm (needs ``logging_nan_inf_filter=False``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = first_non_finite(logs or {})
        if bad:
            key, value = bad
            raise NonFiniteError(f"train: {key} is {value} at step {state.global_step} of {state.max_steps} "
                                 f"(train.learning_rate={args.learning_rate:g}); training diverged, nothing published")
        return control


class StopWhenComplete(TrainerCallback):
    """Stop a run whose restored state has already reached ``max_steps`` before it trains another step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            log.info("the checkpoint of step %d is the last one (max steps %d): nothing left to train",
                     state.global_step, state.max_steps)
            raise TrainingComplete
        return control


def finished_output(state) -> TrainOutput:
    """``Trainer.train()``'s result for a run that had nothing left to train (no steps, no time)."""
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return TrainOutput(state.global_step, losses[-1] if losses else 0.0, {TRAIN_RUNTIME: 0.0})
