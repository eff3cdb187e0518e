"""Train stage: QLoRA / LoRA / full SFT with TRL's SFTTrainer on the tokenize stage's rows.

Entry point: :func:`train_model` (called by ``sft_pipeline.stages.run_train``).
:func:`is_transient` is the retry predicate for the Prefect task.
See :mod:`sft_pipeline.train.launch` for multi-GPU (``accelerate launch``) runs.
"""

import logging

# bitsandbytes logs a warning on import on CPUs without its optional kernel package; nothing is wrong.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from sft_pipeline.train.failures import is_transient
from sft_pipeline.train.trainer import train_model

__all__ = ["is_transient", "train_model"]
