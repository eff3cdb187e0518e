"""The ``ingest`` section: which sources are read, and the limits every row must keep."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sft_pipeline.config.base import FILE, Section

# Canonical field names a source's field_map may rename (see sft_pipeline.ingest.formats).
MappableField = Literal["instruction", "input", "output", "system", "history", "conversations", "messages",
                        "prompt", "completion", "role", "content"]

HUB_SCHEME = "hub:"  # prefix of a source streamed from the hub with datasets.load_dataset


class SourceConfig(Section):
    """One input: where it is and how its rows are read."""

    path: str = Field(json_schema_extra=FILE, description=(
        "A file (JSONL, JSON, Parquet, CSV), a folder saved by `datasets`, a \"package:...\" path or "
        "\"hub:ORG/NAME\"."))
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        default="auto", description="The row format; auto: recognised per row from its fields.")
    split: str = Field(default="train", description="The split read from a hub dataset or a DatasetDict folder.")
    limit: int | None = Field(default=None, ge=1, description="Read at most this many rows; None: all.")
    field_map: dict[MappableField, str] = Field(default_factory=dict, description=(
        "Canonical field name -> this source's column name (or message key, for role and content)."))
    weight: float | None = Field(default=None, ge=0, allow_inf_nan=False, description=(
        "This source's share of the training rows, relative to the other sources' weights (share = weight / sum "
        "of weights: 3 and 1 are 75 % and 25 %; 0: the source trains nothing); set on every source or on none "
        "(none: every row, as many as each source has). The tokenize stage applies it to the rows left for "
        "training after filtering and the held-out split: the total is tokenize.max_rows, or when unset the "
        "largest total every source with rows can fill at its share; each source's rows are sampled by id hash "
        "under run.seed, never repeated; a source with fewer rows than its share gives all it has and its "
        "shortfall is reported (sft_pipeline.tokenize.mixing)."))


class IngestConfig(Section):
    """The sources, read into one canonical conversation table; every row is kept or rejected with a reason."""

    sources: list[SourceConfig] = Field(default_factory=list, description="The inputs, read in this order.")
    max_chars: int = Field(default=200_000, ge=1, description="Longer conversations (in characters) are rejected.")
    max_turns: int = Field(default=256, ge=2, description="Conversations with more messages are rejected.")
    batch_rows: int = Field(default=10_000, ge=1, description="Rows per read batch and per Parquet row group.")
    max_row_bytes: int = Field(default=16 * 2**20, ge=1024, description=(
        "Raw rows bigger than this are rejected without being parsed."))
    drop_leading_assistant: bool = Field(default=False, description=(
        "Drop an assistant message that opens a conversation (ShareGPT chunks that start mid-answer, as "
        "FastChat's trainer does) instead of rejecting the row; the dropped text is kept in metadata."))

    @property
    def mix_weights(self) -> list[float] | None:
        """Each source's weight, by source index, when the sources are mixed by weight; None when none sets one."""
        weights = [src.weight for src in self.sources]
        return None if all(w is None for w in weights) else weights

    @model_validator(mode="after")
    def _check_weights(self) -> "IngestConfig":
        weights = [src.weight for src in self.sources]
        if any(w is None for w in weights) and any(w is not None for w in weights):
            unset = next(i for i, w in enumerate(weights) if w is None)
            raise ValueError(f"sources.{unset}.weight: set a weight on every source or on none")
        if weights and all(w == 0 for w in weights):
            raise ValueError("sources: every weight is 0, so no source would train")
        return self
