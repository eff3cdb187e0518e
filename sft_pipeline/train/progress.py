"""Progress of a training run: a log line every few steps, and a progress bar on a terminal.

The line goes to this package's logger (``sft_pipeline.train``; the flow forwards library
logs to Prefect), on rank 0 only::

    step 10/30 loss 1.4821 lr 1.90e-05 118 tok/s 2m49s left

tokens/s counts the non-pad tokens trained in this run (TRL's ``num_tokens`` log), so a
resumed run reports its own speed. The bar (tqdm, on stderr) is drawn only when stderr
is a terminal.
"""

from __future__ import annotations

import logging
import sys
import time

from transformers import TrainerCallback

log = logging.getLogger(__name__)

TOKENS_LOG = "num_tokens"  # TRL's running count of non-pad tokens trained


def clock(seconds: float) -> str:
    """A short duration.

    >>> clock(5.2), clock(125), clock(3 * 3600 + 65)
    ('5s', '2m05s', '3h01m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(step: int, max_steps: int, logs: dict, tokens_per_s: float | None, left_s: float | None) -> str:
    """One progress line; values not known yet are left out.

    >>> progress_line(10, 30, {"loss": 1.48213, "learning_rate": 1.9e-05}, 118.4, 169)
    'step 10/30 loss 1.4821 lr 1.90e-05 118 tok/s 2m49s left'
    >>> progress_line(1, 30, {}, None, None)
    'step 1/30'
    """
    parts = [f"step {step}/{max_steps}"]
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:.0f} tok/s")
    if left_s is not None:
        parts.append(f"{clock(left_s)} left")
    return " ".join(parts)


class Progress(TrainerCallback):
    """Log :func:`progress_line` every ``every`` optimizer steps (and at the last), draw a bar on a TTY."""

    def __init__(self, every: int, stream=None):
        self.every, self.stream = every, stream or sys.stderr
        self.bar, self.logs = None, {}

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.started, self.first_step = time.monotonic(), state.global_step
        earlier = [entry[TOKENS_LOG] for entry in state.log_history if TOKENS_LOG in entry]
        self.first_tokens, self.logs = (earlier[-1] if earlier else 0), {}
        if state.is_world_process_zero and self.bar is None and self.stream.isatty():
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", desc="train",
                            file=self.stream, dynamic_ncols=True)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.update({k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))})
        if logs and "loss" in logs and self.due(state):
            self.report(state)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        logged_now = state.global_step % args.logging_steps == 0  # then on_log reports, with this step's loss
        if self.due(state) and not logged_now:
            self.report(state)
        return control

    def due(self, state) -> bool:
        """A progress line is due at every ``every``-th step and at the last one, on rank 0."""
        step = state.global_step
        return state.is_world_process_zero and step > self.first_step and (
            step % self.every == 0 or step >= state.max_steps)

    def report(self, state) -> None:
        step, done = state.global_step, state.global_step - self.first_step
        elapsed = max(time.monotonic() - self.started, 1e-9)
        tokens = self.logs.get(TOKENS_LOG)
        rate = (tokens - self.first_tokens) / elapsed if tokens is not None else None
        left = elapsed / done * max(state.max_steps - step, 0)
        line = progress_line(step, state.max_steps, self.logs, rate, left)
        log.info("%s", line)
        if self.bar is not None:
            self.bar.set_postfix_str(line.split(" ", 2)[-1], refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return control
