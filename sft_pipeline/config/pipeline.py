"""The whole configuration tree: one section per stage, plus ``run`` and ``model``."""

from __future__ import annotations

from pydantic import Field, model_validator

from sft_pipeline.config.base import Section
from sft_pipeline.config.evaluate import EvalConfig
from sft_pipeline.config.ingest import IngestConfig
from sft_pipeline.config.run import ModelConfig, RunConfig
from sft_pipeline.config.score import FilterConfig, ScoreConfig
from sft_pipeline.config.tokenize import TokenizeConfig
from sft_pipeline.config.train import TrainConfig


class PipelineConfig(Section):
    """Every setting of a run. Prefect flow parameters are pydantic too, so this travels as one."""

    run: RunConfig = Field(default_factory=RunConfig, description="Where outputs go, the seed, services.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="The sources and row limits.")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="Quality signals and their weights.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Which scored rows are kept.")
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig, description="Token ids, masks, held-out split.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation and the gate.")

    @model_validator(mode="after")
    def _check_sources(self) -> "PipelineConfig":
        if not self.ingest.sources:
            raise ValueError("ingest.sources must name at least one input")
        return self
