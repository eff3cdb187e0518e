"""One typed configuration tree, loaded from YAML with ``a.b=c`` overrides.

Each stage's section lives in a module of its own here (``run``, ``ingest``, ``score``, ``tokenize``,
``train``, ``evaluate``); ``pipeline`` joins them into :class:`PipelineConfig`, ``loader`` reads
YAML and overrides, ``checks`` looks at what values name on this machine, ``tree`` lists every
dotted key (``sft-pipeline config show``). Every section forbids unknown keys, so a typo fails at
load time with the dotted path of the bad key; every field explains itself in its description.
"""

from sft_pipeline.config.base import Section
from sft_pipeline.config.evaluate import EvalConfig, GateConfig
from sft_pipeline.config.ingest import HUB_SCHEME, IngestConfig, MappableField, SourceConfig
from sft_pipeline.config.loader import apply_override, load_config, parse_override, read_config_text, validate_config
from sft_pipeline.config.pipeline import PipelineConfig
from sft_pipeline.config.run import SEED_LIMIT, ModelConfig, RunConfig
from sft_pipeline.config.score import FilterConfig, ScoreConfig
from sft_pipeline.config.tokenize import TokenizeConfig
from sft_pipeline.config.train import LoraSection, TrainConfig

__all__ = ["EvalConfig", "FilterConfig", "GateConfig", "HUB_SCHEME", "IngestConfig", "LoraSection", "MappableField",
           "ModelConfig", "PipelineConfig", "RunConfig", "SEED_LIMIT", "ScoreConfig", "Section", "SourceConfig",
           "TokenizeConfig", "TrainConfig", "apply_override", "load_config", "parse_override", "read_config_text",
           "validate_config"]
