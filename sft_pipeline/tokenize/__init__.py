"""Tokenize stage: assistant-only label masks, held-out split, packing.

``encode_conversation`` turns one conversation into ``input_ids``/``labels``;
``tokenize_split`` runs the whole stage on ``filtered.parquet``.
"""

from sft_pipeline.tokenize.masks import TRAIN_ALL, TRAIN_LAST, encode_conversation
from sft_pipeline.tokenize.stage import tokenize_split
from sft_pipeline.tokenize.template import TemplateInfo, learn_template
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun

__all__ = ["run_stage", "TRAIN_ALL", "TRAIN_LAST", "TemplateInfo", "encode_conversation", "learn_template", "tokenize_split"]


def run_stage(run: "StageRun") -> dict:
    """The stage's entry (sft_pipeline.stages): the filter stage's kept rows -> train and held-out tokens."""
    from sft_pipeline.constants import FILTERED_FILE, STAGE_FILTER
    from sft_pipeline.models import load_tokenizer

    source = run.inputs[STAGE_FILTER] / FILTERED_FILE
    return tokenize_split(source, run.out, load_tokenizer(run.cfg.model), run.cfg.tokenize, seed=run.cfg.run.seed)
