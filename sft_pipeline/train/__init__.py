"""Train stage: QLoRA / LoRA / full SFT with TRL's SFTTrainer on the tokenize stage's rows.

Entry point: :func:`train_stage` (a pipeline config, the tokenize output folder, the output
folder). It builds one :class:`TrainJob` and trains it in this process
(:func:`sft_pipeline.train.trainer.train_model`) or on ``train.num_processes`` launched ranks
(:mod:`sft_pipeline.train.launch`); both back off on out-of-memory through
:func:`sft_pipeline.train.failures.back_off`. :func:`is_transient` is the retry predicate
for the Prefect task.
"""

import logging

# bitsandbytes logs a warning on import on CPUs without its optional kernel package; nothing is wrong.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from sft_pipeline.train.failures import is_transient
from sft_pipeline.train.job import TrainJob
from sft_pipeline.train.entry import train_stage

__all__ = ["TrainJob", "is_transient", "train_stage"]
