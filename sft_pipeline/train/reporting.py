"""Training curves (``train.report_to``): TensorBoard event files in the train output, MLflow when configured.

Both are transformers' own integrations (``TensorBoardCallback``, ``MLflowCallback``), given
their writer and store here instead of through environment variables. Only rank 0 reports.
TensorBoard needs no server to write: ``tensorboard --logdir <train output>/tensorboard``
shows the curves. A resumed run appends to the same folder (steps continue).

MLflow never stops training: its store is checked once before the run
(:func:`sft_pipeline.tracking.store_problem`), and a store that is down, or that fails while
the run logs to it, is a warning and training goes on without it (TensorBoard still writes).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from sft_pipeline import tracking
from sft_pipeline.errors import ConfigError, first_line
from sft_pipeline.train import ranks
from sft_pipeline.train.job import TrainJob

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # in the train output
REPORT_TENSORBOARD = "tensorboard"
REPORT_MLFLOW = "mlflow"
RUN_FINISHED, RUN_FAILED = "FINISHED", "FAILED"


def check_reporting(job: TrainJob) -> None:
    """MLflow reporting needs a tracking store: refuse ``mlflow`` without ``run.tracking_uri`` (one line)."""
    if REPORT_MLFLOW in job.train.report_to and not job.tracking_uri:
        raise ConfigError("train.report_to: mlflow needs run.tracking_uri (e.g. sqlite:///runs/mlflow.db)")


def tensorboard_callback(job: TrainJob):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(job.out_dir / TENSORBOARD_DIR)))


def _tolerant_mlflow_class():
    from transformers.integrations import MLflowCallback

    class TolerantMLflowCallback(MLflowCallback):
        """transformers' MLflow callback, whose first failure is one warning and ends its reporting."""

        def __init__(self, tracking_uri: str):
            super().__init__()
            self.tracking_uri, self.broken = tracking_uri, False

        def _guarded(self, event: str, *args, **kwargs) -> None:
            if self.broken:
                return
            try:
                getattr(super(), event)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self.broken = True
                log.warning("MLflow at %s failed (%s): training goes on without it", self.tracking_uri,
                            first_line(exc))

        def on_train_begin(self, *args, **kwargs):
            self._guarded("on_train_begin", *args, **kwargs)

        def on_log(self, *args, **kwargs):
            self._guarded("on_log", *args, **kwargs)

        def on_save(self, *args, **kwargs):
            self._guarded("on_save", *args, **kwargs)

        def on_train_end(self, *args, **kwargs):
            self._guarded("on_train_end", *args, **kwargs)

        def __del__(self):
            if not self.broken:
                with contextlib.suppress(Exception):
                    super().__del__()

    return TolerantMLflowCallback


def mlflow_callback(job: TrainJob):
    """The MLflow reporter, or None (and one warning) when its store cannot be used now."""
    import mlflow

    tracking.bound_http_retries()
    problem = tracking.store_problem(job.tracking_uri)
    if problem is not None:
        log.warning("train.report_to: MLflow at %s cannot be used (%s): training goes on without it",
                    job.tracking_uri, problem)
        return None
    mlflow.set_tracking_uri(job.tracking_uri)
    return _tolerant_mlflow_class()(job.tracking_uri)


def end_mlflow_run(status: str) -> None:
    """End MLflow's active run in this process (one a failed attempt left open), if any; a store that fails
    now is a warning (the training is done)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    try:
        mlflow.end_run(status=status)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not end the MLflow run (%s)", first_line(exc))


@contextlib.contextmanager
def reporting_callbacks(job: TrainJob) -> Iterator[list]:
    """The callbacks ``job.train.report_to`` asks for (none on ranks other than 0); closed on the way out.

    The same instances serve every out-of-memory attempt, so one MLflow run holds them all.
    """
    check_reporting(job)
    wanted = set(job.train.report_to) if ranks.is_main_rank() else set()
    callbacks = []
    if REPORT_TENSORBOARD in wanted:
        callbacks.append(tensorboard_callback(job))
    if REPORT_MLFLOW in wanted and (reporter := mlflow_callback(job)) is not None:
        callbacks.append(reporter)
    try:
        yield callbacks
    except BaseException:
        end_mlflow_run(RUN_FAILED)
        raise
    else:
        end_mlflow_run(RUN_FINISHED)
    finally:
        for callback in callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.close()
