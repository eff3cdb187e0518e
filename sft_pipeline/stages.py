"""Stage runners: one function per stage, each computing its cache key from content.

A runner resolves its inputs, computes ``stage_key`` (input digests + config
section + code version), writes into ``<output_dir>/<stage>/<key16>/`` through an
atomic temporary directory, writes ``manifest.json`` and returns a small
:class:`StageResult`. Prefect tasks call exactly one runner each; the CLI calls
them directly without an orchestrator.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from sft_pipeline import constants as C
from sft_pipeline.artifacts import atomic_dir, json_digest, path_digest, stage_key, write_manifest
from sft_pipeline.config import PipelineConfig, SourceConfig
from sft_pipeline.resources import resolve_path

KEY_CHARS = 16
HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class StageResult:
    """What a stage hands to the next one: where its output is, and its content key."""

    stage: str
    key: str
    out_dir: str
    counts: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return Path(self.out_dir) / name

    def to_dict(self) -> dict:
        return asdict(self)

    def counts_line(self) -> str:
        """A one-line summary of the scalar counts.

        >>> StageResult("filter", "k", "/o", {"kept": 3, "sweep": [1]}).counts_line()
        'kept=3'
        """
        return " ".join(f"{k}={v}" for k, v in self.counts.items() if isinstance(v, (int, float, str)))


def load_result(cfg: PipelineConfig, stage: str, key: str) -> StageResult:
    """The result of a finished stage run, read back from its manifest."""
    from sft_pipeline.artifacts import read_manifest

    out = stage_dir(cfg, stage, key)
    return StageResult(stage=stage, key=key, out_dir=str(out), counts=read_manifest(out)["counts"])


def stage_dir(cfg: PipelineConfig, stage: str, key: str) -> Path:
    return Path(cfg.run.output_dir) / stage / key[:KEY_CHARS]


def source_digest(source: SourceConfig) -> str:
    if source.path.startswith(HUB_PREFIX):
        return json_digest({"hub": source.path, "split": source.split})
    return path_digest(resolve_path(source.path))


def _run(
    stage: str,
    cfg: PipelineConfig,
    inputs: Mapping[str, str],
    section: Any,
    body: Callable[[Path], dict],
    *,
    atomic: bool = True,
) -> StageResult:
    """Compute the key, run ``body(out_dir)`` and write the manifest."""
    config = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    key = stage_key(stage, inputs, config)
    final = stage_dir(cfg, stage, key)
    started = time.time()
    if atomic:
        with atomic_dir(final) as tmp:
            counts = body(tmp)
            write_manifest(tmp, stage, key=key, inputs=inputs, config=config, counts=counts, started=started)
    else:
        final.mkdir(parents=True, exist_ok=True)
        counts = body(final)
        write_manifest(final, stage, key=key, inputs=inputs, config=config, counts=counts, started=started)
    return StageResult(stage=stage, key=key, out_dir=str(final), counts=counts)


def expected_key(stage: str, cfg: PipelineConfig, upstream: Mapping[str, Any] | None = None) -> str:
    """The key a stage would have now (used by Prefect cache-key functions)."""
    inputs, section = _inputs_and_section(stage, cfg, upstream or {})
    config = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    return stage_key(stage, inputs, config)


def _inputs_and_section(stage: str, cfg: PipelineConfig, up: Mapping[str, Any]) -> tuple[dict, Any]:
    from sft_pipeline.models import model_digest

    def file_of(res: Any, name: str) -> str:
        return path_digest(Path(_out_dir(res)) / name)

    if stage == C.STAGE_INGEST:
        return {f"source{i}": source_digest(s) for i, s in enumerate(cfg.ingest.sources)}, cfg.ingest
    if stage == C.STAGE_SCORE:
        return {"conversations": file_of(up["ingest"], C.CONVERSATIONS_FILE)}, cfg.score
    if stage == C.STAGE_FILTER:
        return {"scores": file_of(up["score"], C.SCORES_FILE)}, cfg.filter
    if stage == C.STAGE_TOKENIZE:
        return (
            {"filtered": file_of(up["filter"], C.FILTERED_FILE), "model": model_digest(cfg.model)},
            {"tokenize": cfg.tokenize.model_dump(mode="json"), "chat_template": cfg.model.chat_template,
             "seed": cfg.run.seed},
        )
    if stage == C.STAGE_TRAIN:
        train = cfg.train.model_dump(mode="json", exclude={"work_pool"})
        return (
            {"train": file_of(up["tokenize"], C.TRAIN_TOKENS_FILE), "model": model_digest(cfg.model)},
            {"train": train, "seed": cfg.run.seed},
        )
    if stage == C.STAGE_EVALUATE:
        return (
            {
                "adapter": path_digest(Path(_out_dir(up["train"])) / C.ADAPTER_DIR),
                "heldout": file_of(up["tokenize"], C.HELDOUT_TOKENS_FILE),
                "model": model_digest(cfg.model),
            },
            {"eval": cfg.eval.model_dump(mode="json"), "seed": cfg.run.seed},
        )
    raise ValueError(f"unknown stage {stage!r}")


def _out_dir(res: Any) -> str:
    return res.out_dir if isinstance(res, StageResult) else res["out_dir"]


def run_ingest(cfg: PipelineConfig) -> StageResult:
    from sft_pipeline.ingest import ingest_sources

    inputs, section = _inputs_and_section(C.STAGE_INGEST, cfg, {})
    return _run(C.STAGE_INGEST, cfg, inputs, section, lambda out: ingest_sources(cfg.ingest, out))


def run_score(cfg: PipelineConfig, ingest: StageResult, shards: list[str] | None = None) -> StageResult:
    """Score the conversations; with ``shards`` (from :func:`run_score_shard`), merge those instead."""
    from sft_pipeline.score import score_conversations
    from sft_pipeline.score.shards import merge_shards

    inputs, section = _inputs_and_section(C.STAGE_SCORE, cfg, {"ingest": ingest})
    src = ingest.path(C.CONVERSATIONS_FILE)

    def body(out: Path) -> dict:
        if shards:
            return merge_shards(src, shards, out / C.SCORES_FILE, cfg.score)
        return score_conversations(src, out / C.SCORES_FILE, cfg.score)

    result = _run(C.STAGE_SCORE, cfg, inputs, section, body)
    if shards:
        shutil.rmtree(Path(shards[0]).parent, ignore_errors=True)
    return result


def is_done(cfg: PipelineConfig, stage: str, upstream: Mapping[str, Any]) -> bool:
    """Whether the stage's output at its current key is complete (its manifest is written last)."""
    return (stage_dir(cfg, stage, expected_key(stage, cfg, upstream)) / C.MANIFEST_FILE).exists()


def plan_score_shards(cfg: PipelineConfig, ingest: StageResult) -> list[list[int]]:
    """Row-group runs of the conversations for ``run.score_shards`` workers."""
    from sft_pipeline.score.shards import shard_plan

    return shard_plan(ingest.path(C.CONVERSATIONS_FILE), cfg.run.score_shards)


def run_score_shard(cfg: PipelineConfig, ingest: StageResult, index: int, row_groups: list[int]) -> str:
    """Pass 1 of scoring over ``row_groups``, into a scratch folder beside the stage's output."""
    from sft_pipeline.score.shards import score_shard

    key = expected_key(C.STAGE_SCORE, cfg, {"ingest": ingest})
    scratch = stage_dir(cfg, C.STAGE_SCORE, key).with_name(f".{key[:KEY_CHARS]}.shards")
    scratch.mkdir(parents=True, exist_ok=True)
    final = scratch / f"shard-{index:05d}.npz"
    tmp = final.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    score_shard(ingest.path(C.CONVERSATIONS_FILE), row_groups, tmp, cfg.score)
    os.replace(tmp, final)
    return str(final)


def run_filter(cfg: PipelineConfig, score: StageResult) -> StageResult:
    from sft_pipeline.filter import filter_scored

    inputs, section = _inputs_and_section(C.STAGE_FILTER, cfg, {"score": score})
    src = score.path(C.SCORES_FILE)
    return _run(C.STAGE_FILTER, cfg, inputs, section, lambda out: filter_scored(src, out, cfg.filter))


def run_tokenize(cfg: PipelineConfig, filtered: StageResult) -> StageResult:
    from sft_pipeline.models import load_tokenizer
    from sft_pipeline.tokenize import tokenize_split

    inputs, section = _inputs_and_section(C.STAGE_TOKENIZE, cfg, {"filter": filtered})
    src = filtered.path(C.FILTERED_FILE)

    def body(out: Path) -> dict:
        return tokenize_split(src, out, load_tokenizer(cfg.model), cfg.tokenize, seed=cfg.run.seed)

    return _run(C.STAGE_TOKENIZE, cfg, inputs, section, body)


def run_train(cfg: PipelineConfig, tokenized: StageResult) -> StageResult:
    """Training writes in place (not atomically) so that checkpoints survive a retry."""
    from sft_pipeline.train import train_model

    inputs, section = _inputs_and_section(C.STAGE_TRAIN, cfg, {"tokenize": tokenized})

    def body(out: Path) -> dict:
        return train_model(cfg.model, Path(tokenized.out_dir), out, cfg.train, seed=cfg.run.seed)

    return _run(C.STAGE_TRAIN, cfg, inputs, section, body, atomic=False)


def run_evaluate(cfg: PipelineConfig, upstream: Mapping[str, StageResult]) -> StageResult:
    from sft_pipeline.evaluate import evaluate_run

    inputs, section = _inputs_and_section(C.STAGE_EVALUATE, cfg, upstream)
    dirs = {name: Path(res.out_dir) for name, res in upstream.items()}
    return _run(C.STAGE_EVALUATE, cfg, inputs, section,
                lambda out: evaluate_run(cfg.model, dirs, out, cfg.eval, seed=cfg.run.seed))
