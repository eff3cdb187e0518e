"""The ``tokenize`` section: how rows become token ids and label masks, and the held-out split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sft_pipeline.config.base import Section
from sft_pipeline.tokenize.truncation import Truncation


class TokenizeConfig(Section):
    """Chat-template rendering, truncation, label masks, packing and the held-out split."""

    max_length: int = Field(default=1024, ge=8, description="Tokens per training row.")
    truncation: Truncation = Field(default=Truncation.WHOLE_TURNS, description=(
        "Rows longer than max_length. whole_turns: keep whole turns up to the last assistant turn ending inside "
        "max_length (rows whose first answer does not fit are dropped); keep_start: the first max_length tokens; "
        "drop: drop the row. Every drop is counted, with its reason."))
    train_on: Literal["all_assistant", "last_assistant"] = Field(default="all_assistant", description=(
        "Which assistant turns carry labels (the rest of the row is context only)."))
    packing: bool = Field(default=False, description=(
        "Pack rows into max_length sequences (best-fit decreasing, padding-free: seq_lengths + position_ids)."))
    heldout_fraction: float = Field(default=0.05, ge=0, lt=1, description=(
        "The share of rows held out for evaluation, chosen by a hash of the row id."))
    max_heldout_rows: int | None = Field(default=200, ge=1, description=(
        "At most this many held-out rows; extra candidates stay in train. None: no limit."))
    max_rows: int | None = Field(default=None, ge=1, description=(
        "Train on a deterministic subset of this many rows (by id hash); None: all."))
    decontaminate_ngram: int = Field(default=8, ge=3, description=(
        "Drop held-out rows that share a word n-gram of this length with a train row."))
    num_proc: int = Field(default=1, ge=1, description=(
        "Encoding processes (spawned, not forked, while threads run)."))
    batch_rows: int = Field(default=512, ge=1, description="Rows per tokenizer call and per worker task.")
    preview_rows: int = Field(default=3, ge=0, description="Rows shown token by token in mask_preview.md.")
