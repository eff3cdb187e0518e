"""Tokenize stage: assistant-only label masks, held-out split, packing.

``encode_conversation`` turns one conversation into ``input_ids``/``labels``;
``tokenize_split`` runs the whole stage on ``filtered.parquet``.
"""

from sft_pipeline.tokenize.masks import TRAIN_ALL, TRAIN_LAST, encode_conversation
from sft_pipeline.tokenize.stage import tokenize_split
from sft_pipeline.tokenize.template import TemplateInfo, learn_template

__all__ = ["TRAIN_ALL", "TRAIN_LAST", "TemplateInfo", "encode_conversation", "learn_template", "tokenize_split"]
