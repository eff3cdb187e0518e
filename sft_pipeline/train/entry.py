"""The train stage: :func:`train_stage` (in this process or on launched ranks) and the stage's entry.

The entry (sft_pipeline.stages) resumes from a mirrored checkpoint, trains, and tidies the adapter.
Training writes in place (not atomically) so that checkpoints survive a retry. With outputs on
a URL, complete checkpoints are mirrored there too (``run.checkpoint_url``), and a retry on any
machine first downloads the newest one; they are deleted once the output is published.
The saved adapter is made reproducible: identical runs write identical files, so that the
evaluate stage's key (a digest of the adapter) is the same for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import ADAPTER_DIR, CHECKPOINTS_DIR, STAGE_TOKENIZE
from sft_pipeline.errors import InputError
from sft_pipeline.train.job import TrainJob
from sft_pipeline.train.resume import pull_latest

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"
BASE_MODEL_KEY = "base_model_name_or_path"
UNREPRODUCIBLE = ("training_args.bin",)  # a pickle of the trainer's arguments: paths and times of this run


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


def run_stage(run: StageRun) -> dict:
    url = run.checkpoint_url
    if url and (step := pull_latest(url, run.out / CHECKPOINTS_DIR)) is not None:
        log.info("downloaded the checkpoint of step %d from %s", step, url)
    summary = train_stage(run.cfg, run.inputs[STAGE_TOKENIZE], run.out, checkpoint_url=url)
    reproducible_adapter(run.out / ADAPTER_DIR, run.cfg.model.name_or_path)
    return summary


def reproducible_adapter(folder: Path, model_spec: str) -> None:
    """Name the base model as configured (not this machine's path), sort lists, drop run-specific files."""
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        return  # full fine-tuning saves a whole model, not an adapter
    config = json.loads(config_path.read_text())
    local = config.get(BASE_MODEL_KEY)
    config[BASE_MODEL_KEY] = model_spec
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    card = folder / MODEL_CARD
    if local and card.is_file():
        card.write_text(card.read_text().replace(local, model_spec))
    for name in UNREPRODUCIBLE:
        (folder / name).unlink(missing_ok=True)
