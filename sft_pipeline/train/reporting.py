"""Training curves (``train.report_to``): TensorBoard event files in the train output, MLflow when configured.

Both are transformers' own integrations (``TensorBoardCallback``, ``MLflowCallback``), given
their writer and store here instead of through environment variables. Only rank 0 reports.
TensorBoard needs no server to write: ``tensorboard --logdir <train output>/tensorboard``
shows the curves. A resumed run appends to the same folder (steps continue).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from sft_pipeline.errors import ConfigError
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


def mlflow_callback(job: TrainJob):
    import mlflow
    from transformers.integrations import MLflowCallback

    mlflow.set_tracking_uri(job.tracking_uri)
    return MLflowCallback()


def end_mlflow_run(status: str) -> None:
    """End MLflow's active run in this process (one a failed attempt left open), if any."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run(status=status)


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
    if REPORT_MLFLOW in wanted:
        callbacks.append(mlflow_callback(job))
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
