"""The stages, each declared once: what it reads, which config it depends on, what runs it.

When is a stage recomputed? Its key (``sft_pipeline.cache.key``) is a digest of

* the content of every upstream file it ``reads`` (taken from the upstream manifest's file
  digests: nothing is re-hashed or downloaded to compute a key);
* the values of its config ``sections`` (dotted paths), and the content of any file or folder
  a value there names (a local model, a chat-template file, a prompt file);
* its code version: the code (comments and docstrings aside) of every project module its ``entry``
  reaches through imports, the config schema and name modules aside (``artifacts.OUTSIDE_CODE_VERSION``).

An output is served from the cache only when its manifest and every file the manifest lists
are present with their recorded sizes (and digests, up to a size); anything else is recomputed.
The flow, its tasks, the CLI's ``--until``, the manifest and the report all read ``STAGES``;
adding a stage is one declaration here plus its package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from sft_pipeline.constants import (ADAPTER_DIR, BASELINE_FILE, CONVERSATIONS_FILE, DROPPED_FILE, EVAL_RESULTS_FILE,
                                    FILTERED_FILE, HELDOUT_TOKENS_FILE, KEY_CHARS, METRICS_FILE, REJECTS_FILE,
                                    REPORT_MD_FILE, SCORES_FILE, STAGE_BASELINE, STAGE_EVALUATE, STAGE_FILTER,
                                    STAGE_INGEST, STAGE_SCORE, STAGE_SWEEP_TRAIN_IDS, STAGE_TOKENIZE, STAGE_TRAIN,
                                    TRAIN_IDS_FILE, TRAIN_TOKENS_FILE)
from sft_pipeline.artifacts import code_version, folder_digest
from sft_pipeline.config import PipelineConfig


@dataclass(frozen=True)
class Unkeyed:
    """Config values (dotted paths) that do not change a stage's output, so they stay out of its key:
    always, or while ``when`` holds of the config (a setting that only matters under another)."""

    paths: tuple[str, ...]
    when: Callable[[PipelineConfig], bool] | None = None

    def applies(self, cfg: PipelineConfig) -> bool:
        return self.when is None or self.when(cfg)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once."""

    name: str
    entry: str  # "module:function": takes a StageRun, writes into run.out, returns its summary
    reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # upstream stage -> files/folders it keys on
    optional_reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the same, when the flow hands it over
    sections: tuple[str, ...] = ()  # dotted config paths whose values (and named files) enter the key
    outside_key: tuple[Unkeyed, ...] = ()  # values in those sections that do not
    writes: tuple[str, ...] = ()  # files every complete output has
    atomic: bool = True  # False: written in place, so that checkpoints survive a retry
    transient: str | None = None  # "module:function" deciding which errors a retry may fix (default: not ours)

    @property
    def code_version(self) -> str:
        return code_version(self.entry.partition(":")[0])

    def function(self) -> Callable[[StageRun], dict]:
        return resolve(self.entry)

    def reads_given(self, upstream: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """What the stage reads of ``upstream``: every one of ``reads``, and each optional read that is there.

        >>> Stage("s", "m:f", reads={"a": ("x",)}, optional_reads={"b": ("y",)}).reads_given({"a": 1})
        {'a': ('x',)}
        """
        return {**self.reads, **{name: files for name, files in self.optional_reads.items() if name in upstream}}

    def unkeyed(self, cfg: PipelineConfig) -> set[str]:
        """The dotted paths of ``cfg`` that stay out of this stage's key.

        >>> sorted(get("train").unkeyed(PipelineConfig(ingest={"sources": [{"path": "x"}]})))[:2]
        ['train.distributed', 'train.num_processes']
        """
        return {path for rule in self.outside_key if rule.applies(cfg) for path in rule.paths}


def resolve(ref: str) -> Callable:
    """The function named by ``"module:function"`` (imported on first use: stage code is heavy)."""
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


LINE_DETAILS = ("verdict", "method")  # details shown beside the counts (evaluate's verdict, filter's method)


class StageResult(BaseModel):
    """What a stage hands to the next: where its output is, its key, its counts and file digests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    key: str
    out_dir: str  # on the machine that ran it; elsewhere use cache.output_folder(cfg, result)
    url: str | None = None  # where it was published, when run.output_dir is a URL
    counts: dict[str, int | float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)  # the rest of the summary (a verdict, a method, tables)
    files: dict[str, str] = Field(default_factory=dict)  # output file -> sha256

    def path(self, name: str) -> Path:
        return Path(self.out_dir) / name

    def digest(self, name: str) -> str:
        """Content digest of an output file or folder, from the recorded file digests."""
        if name in self.files:
            return self.files[name]
        if not any(f.startswith(name.rstrip("/") + "/") for f in self.files):
            raise KeyError(f"{self.stage} output {self.key[:KEY_CHARS]} has no file or folder {name!r}")
        return folder_digest(self.files, name)

    def counts_line(self) -> str:
        """A one-line summary: the counts, and the details named in ``LINE_DETAILS``.

        >>> StageResult(stage="filter", key="k", out_dir="/o", counts={"kept": 3}, details={"method": "threshold",
        ...             "sweep": []}).counts_line()
        'kept=3 method=threshold'
        """
        extra = {name: self.details.get(name) for name in LINE_DETAILS}
        return " ".join(f"{k}={v}" for k, v in {**self.counts, **extra}.items() if v is not None)


@dataclass(frozen=True)
class StageRun:
    """What a stage's entry function is given."""

    cfg: PipelineConfig
    out: Path  # write here
    inputs: Mapping[str, Path]  # upstream stage -> its output folder on this machine
    key: str
    checkpoint_url: str | None = None  # non-atomic stages on a URL: where checkpoints are mirrored
    extra: Mapping[str, Any] = field(default_factory=dict)  # orchestration hints (score shards)


TRAIN_TRANSIENT = "sft_pipeline.train.failures:is_transient"
MIX_WEIGHTS = "ingest.mix_weights"  # the sources' weights (by index), which the tokenize stage mixes train rows by


def _one_process(cfg: PipelineConfig) -> bool:
    return cfg.train.num_processes == 1


# Training gives the same adapter wherever it runs and whatever it reports to; launch settings matter only
# for several ranks.
# Source weights do not change what ingest writes: the tokenize stage applies them (MIX_WEIGHTS).
INGEST_UNKEYED = (Unkeyed(("ingest.sources.__all__.weight",)),)
TRAIN_UNKEYED = (Unkeyed(("train.work_pool", "train.report_to", "train.progress_steps")),
                 Unkeyed(("train.num_processes", "train.distributed"), when=_one_process))

STAGES: tuple[Stage, ...] = (
    Stage(STAGE_INGEST, "sft_pipeline.ingest.entry:run_stage", sections=("ingest",), outside_key=INGEST_UNKEYED,
          writes=(CONVERSATIONS_FILE, REJECTS_FILE)),
    Stage(STAGE_SCORE, "sft_pipeline.score.entry:run_stage", reads={STAGE_INGEST: (CONVERSATIONS_FILE,)},
          sections=("score",), writes=(SCORES_FILE,)),
    Stage(STAGE_FILTER, "sft_pipeline.filter.entry:run_stage", reads={STAGE_SCORE: (SCORES_FILE,)},
          sections=("filter", "run.seed"), writes=(FILTERED_FILE, DROPPED_FILE)),  # the seed draws random_rows
    # A sweep's shared held-out set also reads the ids of the rows its branches train on (sft_pipeline.sweep_rows).
    Stage(STAGE_TOKENIZE, "sft_pipeline.tokenize.entry:run_stage", reads={STAGE_FILTER: (FILTERED_FILE,)},
          optional_reads={STAGE_SWEEP_TRAIN_IDS: (TRAIN_IDS_FILE,)},
          sections=("tokenize", "model", "run.seed", MIX_WEIGHTS), writes=(TRAIN_TOKENS_FILE, HELDOUT_TOKENS_FILE)),
    Stage(STAGE_TRAIN, "sft_pipeline.train.entry:run_stage", reads={STAGE_TOKENIZE: (TRAIN_TOKENS_FILE,)},
          sections=("train", "model", "run.seed"), outside_key=TRAIN_UNKEYED, writes=(ADAPTER_DIR, METRICS_FILE),
          atomic=False,
          transient=TRAIN_TRANSIENT),
    # The base model, measured once per held-out set and evaluation config: a change to training alone, or the
    # branches of a sweep, reuse it. After train, so that `--until train` does not evaluate (and `--until baseline`
    # trains first).
    Stage(STAGE_BASELINE, "sft_pipeline.baseline.entry:run_stage", reads={STAGE_TOKENIZE: (HELDOUT_TOKENS_FILE,)},
          sections=("eval", "model", "run.seed"), writes=(BASELINE_FILE,)),
    # The first three are read for the report's stage tables only: they do not enter the key.
    Stage(STAGE_EVALUATE, "sft_pipeline.evaluate.entry:run_stage",
          reads={STAGE_INGEST: (), STAGE_SCORE: (), STAGE_FILTER: (), STAGE_TOKENIZE: (HELDOUT_TOKENS_FILE,),
                 STAGE_TRAIN: (ADAPTER_DIR,), STAGE_BASELINE: (BASELINE_FILE,)},
          sections=("eval", "model", "run.seed"), writes=(EVAL_RESULTS_FILE, REPORT_MD_FILE)),
)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def get(name: str) -> Stage:
    return BY_NAME[name]


def upto(name: str) -> tuple[Stage, ...]:
    """The stages from the first through ``name``.

    >>> [s.name for s in upto("filter")]
    ['ingest', 'score', 'filter']
    """
    return STAGES[: NAMES.index(name) + 1]
