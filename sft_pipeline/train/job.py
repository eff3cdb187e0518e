"""What one training run is, as one value: :class:`TrainJob`; and one attempt's batch shape: :class:`Batch`.

A job is everything the train stage needs that can be written down: the model and
train sections, the seed, where the rows are and where the output goes. Launched
ranks receive it as JSON (:meth:`TrainJob.spec`, :meth:`TrainJob.load`). Live objects
(``TrainerCallback`` instances) are passed next to it, never inside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sft_pipeline.config import ModelConfig, PipelineConfig, TrainConfig
from sft_pipeline.constants import CHECKPOINTS_DIR, TRAIN_TOKENS_FILE

OUTCOME_OK = "ok"
OUTCOME_OOM = "oom"


@dataclass(frozen=True)
class Batch:
    """One attempt's micro-batch and gradient accumulation (their product is the per-rank effective batch).

    >>> Batch(4, 2).effective, Batch(4, 2).record(OUTCOME_OOM)
    (8, {'micro_batch': 4, 'gradient_accumulation': 2, 'outcome': 'oom'})
    """

    micro: int
    accumulation: int

    @property
    def effective(self) -> int:
        return self.micro * self.accumulation

    def record(self, outcome: str) -> dict:
        """This attempt as listed in ``metrics.json``'s ``attempts``."""
        return {"micro_batch": self.micro, "gradient_accumulation": self.accumulation, "outcome": outcome}


@dataclass(frozen=True)
class TrainJob:
    """One training run: configuration sections, seed, input and output folders, optional mirrors."""

    model: ModelConfig
    train: TrainConfig
    tokenized_dir: Path
    out_dir: Path
    seed: int
    checkpoint_url: str | None = None  # complete checkpoints are also uploaded there
    tracking_uri: str | None = None  # MLflow tracking store, when train.report_to names mlflow

    def __post_init__(self):
        object.__setattr__(self, "tokenized_dir", Path(self.tokenized_dir))
        object.__setattr__(self, "out_dir", Path(self.out_dir))

    @classmethod
    def from_config(cls, cfg: PipelineConfig, tokenized_dir: str | Path, out_dir: str | Path, *,
                    checkpoint_url: str | None = None) -> "TrainJob":
        return cls(model=cfg.model, train=cfg.train, tokenized_dir=Path(tokenized_dir), out_dir=Path(out_dir),
                   seed=cfg.run.seed, checkpoint_url=checkpoint_url, tracking_uri=cfg.run.tracking_uri)

    @property
    def batch(self) -> Batch:
        """The configured batch shape (the first attempt's)."""
        return Batch(self.train.batch_size, self.train.gradient_accumulation)

    def with_batch(self, batch: Batch) -> "TrainJob":
        """This job at another micro-batch / accumulation (what a relaunch after out-of-memory runs)."""
        train = self.train.model_copy(update={"batch_size": batch.micro, "gradient_accumulation": batch.accumulation})
        return replace(self, train=train)

    @property
    def train_file(self) -> Path:
        return self.tokenized_dir / TRAIN_TOKENS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.out_dir / CHECKPOINTS_DIR

    def spec(self) -> dict:
        """The job as JSON-ready data, folders left out (a rank is told them on its command line)."""
        return {"model": self.model.model_dump(mode="json"), "train": self.train.model_dump(mode="json"),
                "seed": self.seed, "checkpoint_url": self.checkpoint_url, "tracking_uri": self.tracking_uri}

    @classmethod
    def load(cls, path: str | Path, tokenized_dir: str | Path, out_dir: str | Path) -> "TrainJob":
        """The job written by :meth:`spec` to ``path``, with its folders."""
        spec = json.loads(Path(path).read_text())
        return cls(model=ModelConfig.model_validate(spec["model"]), train=TrainConfig.model_validate(spec["train"]),
                   tokenized_dir=Path(tokenized_dir), out_dir=Path(out_dir), seed=spec["seed"],
                   checkpoint_url=spec["checkpoint_url"], tracking_uri=spec["tracking_uri"])
