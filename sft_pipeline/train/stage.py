"""The train stage's one entry point: :func:`train_stage`, in this process or on launched ranks."""

from __future__ import annotations

from pathlib import Path

from sft_pipeline.config import PipelineConfig
from sft_pipeline.errors import InputError
from sft_pipeline.train.job import TrainJob


def make_output_folder(path: Path) -> Path:
    """Create ``path`` (and its parents); a name the file system refuses is one :class:`InputError` line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the train output folder ({exc.strerror or exc})") from None
    return path


def train_stage(cfg: PipelineConfig, tokenized_dir: str | Path, out_dir: str | Path, *,
                checkpoint_url: str | None = None) -> dict:
    """Train on the tokenize stage's output in ``tokenized_dir``; write adapter, metrics, loss curve to ``out_dir``.

    Runs in this process, or on ``train.num_processes`` ranks started by ``accelerate launch``.
    ``checkpoint_url``: also upload every complete checkpoint there (see ``resume.CheckpointMirror``).
    Returns the counts recorded in the stage manifest.
    """
    from sft_pipeline.train import launch, trainer  # at call time: launch imports this module

    job = TrainJob.from_config(cfg, tokenized_dir, out_dir, checkpoint_url=checkpoint_url)
    make_output_folder(job.out_dir)
    if job.train.num_processes > 1:
        return launch.launch_training(job)
    return trainer.train_model(job)
