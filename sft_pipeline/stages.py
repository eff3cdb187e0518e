"""Stage runners: one function per stage, each computing its cache key from content.

A runner resolves its inputs, computes ``stage_key`` (input digests + config
section + code version), writes into ``<output_dir>/<stage>/<key16>/`` through an
atomic temporary directory, writes ``manifest.json`` and returns a small
:class:`StageResult`. When ``output_dir`` is an fsspec URL, that folder is a local working
copy, published to the URL afterwards; upstream outputs are fetched by stage and key
(sft_pipeline.storage). Prefect tasks call exactly one runner each; the CLI calls
them directly without an orchestrator.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from sft_pipeline import constants as C
from sft_pipeline import storage
from sft_pipeline.artifacts import atomic_dir, json_digest, path_digest, stage_key, write_manifest
from sft_pipeline.config import PipelineConfig, SourceConfig
from sft_pipeline.errors import InputError
from sft_pipeline.resources import resolve_path

log = logging.getLogger(__name__)

KEY_CHARS = 16
HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class StageResult:
    """What a stage hands to the next one: where its output is, and its content key."""

    stage: str
    key: str
    out_dir: str  # on the machine that ran it; elsewhere use local_dir(cfg, result)
    counts: dict[str, Any] = field(default_factory=dict)
    url: str | None = None  # where it was published, when run.output_dir is a URL

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
    storage.fetch(cfg.run, _rel(stage, key))
    url = storage.url_of(cfg.run, _rel(stage, key)) if storage.is_remote(cfg.run) else None
    return StageResult(stage=stage, key=key, out_dir=str(out), counts=read_manifest(out)["counts"], url=url)


def stage_dir(cfg: PipelineConfig, stage: str, key: str) -> Path:
    return storage.local_root(cfg.run) / _rel(stage, key)


def _rel(stage: str, key: str) -> str:
    return f"{stage}/{key[:KEY_CHARS]}"


def local_dir(cfg: PipelineConfig, res: StageResult | Mapping[str, Any]) -> Path:
    """The folder of a finished stage's output on this machine (fetched from the URL if need be)."""
    res = res if isinstance(res, StageResult) else StageResult(**res)
    if not storage.is_remote(cfg.run):
        return Path(res.out_dir)
    rel = _rel(res.stage, res.key)
    if not storage.fetch(cfg.run, rel):
        raise InputError(f"{res.stage} output {res.key[:KEY_CHARS]} found neither in "
                         f"{stage_dir(cfg, res.stage, res.key)} nor at {storage.url_of(cfg.run, rel)}")
    return stage_dir(cfg, res.stage, res.key)


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
    rel = _rel(stage, key)
    if storage.is_remote(cfg.run) and storage.fetch(cfg.run, rel):  # done here or on another machine
        if not storage.is_published(cfg.run, rel):
            storage.publish(cfg.run, rel)
        return load_result(cfg, stage, key)
    started = time.time()
    if atomic:
        with atomic_dir(final) as tmp:
            counts = body(tmp)
            write_manifest(tmp, stage, key=key, inputs=inputs, config=config, counts=counts, started=started)
    else:
        final.mkdir(parents=True, exist_ok=True)
        counts = body(final)
        write_manifest(final, stage, key=key, inputs=inputs, config=config, counts=counts, started=started)
    url = storage.publish(cfg.run, rel)
    return StageResult(stage=stage, key=key, out_dir=str(final), counts=counts, url=url)


def expected_key(stage: str, cfg: PipelineConfig, upstream: Mapping[str, Any] | None = None) -> str:
    """The key a stage would have now (used by Prefect cache-key functions)."""
    inputs, section = _inputs_and_section(stage, cfg, upstream or {})
    config = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    return stage_key(stage, inputs, config)


def _inputs_and_section(stage: str, cfg: PipelineConfig, up: Mapping[str, Any]) -> tuple[dict, Any]:
    from sft_pipeline.models import model_digest

    def file_of(res: Any, name: str) -> str:
        return path_digest(local_dir(cfg, res) / name)

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
        # Where it runs does not change the result; one process makes the launch settings moot.
        single = {"num_processes", "distributed"} if cfg.train.num_processes == 1 else set()
        train = cfg.train.model_dump(mode="json", exclude={"work_pool", *single})
        return (
            {"train": file_of(up["tokenize"], C.TRAIN_TOKENS_FILE), "model": model_digest(cfg.model)},
            {"train": train, "seed": cfg.run.seed},
        )
    if stage == C.STAGE_EVALUATE:
        return (
            {
                "adapter": path_digest(local_dir(cfg, up["train"]) / C.ADAPTER_DIR),
                "heldout": file_of(up["tokenize"], C.HELDOUT_TOKENS_FILE),
                "model": model_digest(cfg.model),
            },
            {"eval": cfg.eval.model_dump(mode="json"), "seed": cfg.run.seed},
        )
    raise ValueError(f"unknown stage {stage!r}")


def run_ingest(cfg: PipelineConfig) -> StageResult:
    from sft_pipeline.ingest import ingest_sources

    inputs, section = _inputs_and_section(C.STAGE_INGEST, cfg, {})
    return _run(C.STAGE_INGEST, cfg, inputs, section, lambda out: ingest_sources(cfg.ingest, out))


def run_score(cfg: PipelineConfig, ingest: StageResult, shards: list[str] | None = None) -> StageResult:
    """Score the conversations; with ``shards`` (from :func:`run_score_shard`), merge those instead."""
    from sft_pipeline.score import score_conversations
    from sft_pipeline.score.shards import merge_shards

    inputs, section = _inputs_and_section(C.STAGE_SCORE, cfg, {"ingest": ingest})
    src = local_dir(cfg, ingest) / C.CONVERSATIONS_FILE

    def body(out: Path) -> dict:
        if shards:
            local = [storage.fetch_file(cfg.run, s) for s in shards]
            return merge_shards(src, local, out / C.SCORES_FILE, cfg.score)
        return score_conversations(src, out / C.SCORES_FILE, cfg.score)

    result = _run(C.STAGE_SCORE, cfg, inputs, section, body)
    if shards:
        storage.remove(cfg.run, _shards_rel(result.key))
    return result


def _shards_rel(score_key: str) -> str:
    """Scratch folder of the score shards, beside the stage's output."""
    return f"{C.STAGE_SCORE}/.{score_key[:KEY_CHARS]}.shards"


def is_done(cfg: PipelineConfig, stage: str, upstream: Mapping[str, Any]) -> bool:
    """Whether the stage's output at its current key is complete (its manifest is written last)."""
    key = expected_key(stage, cfg, upstream)
    return (stage_dir(cfg, stage, key) / C.MANIFEST_FILE).exists() or storage.is_published(cfg.run, _rel(stage, key))


def plan_score_shards(cfg: PipelineConfig, ingest: StageResult) -> list[list[int]]:
    """Row-group runs of the conversations for ``run.score_shards`` workers."""
    from sft_pipeline.score.shards import shard_plan

    return shard_plan(local_dir(cfg, ingest) / C.CONVERSATIONS_FILE, cfg.run.score_shards)


def run_score_shard(cfg: PipelineConfig, ingest: StageResult, index: int, row_groups: list[int],
                    score_key: str) -> str:
    """Pass 1 of scoring over ``row_groups``, into a scratch folder beside the stage's output.

    ``score_key`` is the score stage's key (``expected_key``), computed once by the caller so
    that no shard worker hashes the whole conversations file again. Returns the shard's local
    path, or its URL when ``run.output_dir`` is one.
    """
    from sft_pipeline.score.shards import score_shard

    rel = f"{_shards_rel(score_key)}/shard-{index:05d}.npz"
    final = storage.local_root(cfg.run) / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    score_shard(local_dir(cfg, ingest) / C.CONVERSATIONS_FILE, row_groups, tmp, cfg.score)
    os.replace(tmp, final)
    return storage.publish_file(cfg.run, rel)


def run_filter(cfg: PipelineConfig, score: StageResult) -> StageResult:
    from sft_pipeline.filter import filter_scored

    inputs, section = _inputs_and_section(C.STAGE_FILTER, cfg, {"score": score})
    src = local_dir(cfg, score) / C.SCORES_FILE
    return _run(C.STAGE_FILTER, cfg, inputs, section, lambda out: filter_scored(src, out, cfg.filter))


def run_tokenize(cfg: PipelineConfig, filtered: StageResult) -> StageResult:
    from sft_pipeline.models import load_tokenizer
    from sft_pipeline.tokenize import tokenize_split

    inputs, section = _inputs_and_section(C.STAGE_TOKENIZE, cfg, {"filter": filtered})
    src = local_dir(cfg, filtered) / C.FILTERED_FILE

    def body(out: Path) -> dict:
        return tokenize_split(src, out, load_tokenizer(cfg.model), cfg.tokenize, seed=cfg.run.seed)

    return _run(C.STAGE_TOKENIZE, cfg, inputs, section, body)


def run_train(cfg: PipelineConfig, tokenized: StageResult) -> StageResult:
    """Training writes in place (not atomically) so that checkpoints survive a retry.

    With outputs on a URL, complete checkpoints are mirrored there too, and a retry on
    any machine first downloads the newest one; they are deleted once the output is published.
    """
    from sft_pipeline.train.launch import train_stage
    from sft_pipeline.train.resume import pull_latest

    inputs, section = _inputs_and_section(C.STAGE_TRAIN, cfg, {"tokenize": tokenized})

    def body(out: Path) -> dict:
        url = storage.checkpoints_url(cfg.run, out.relative_to(storage.local_root(cfg.run)).as_posix())
        if url and (step := pull_latest(url, out / C.CHECKPOINTS_DIR)) is not None:
            log.info("downloaded the checkpoint of step %d from %s", step, url)
        return train_stage(cfg, local_dir(cfg, tokenized), out, checkpoint_url=url)

    result = _run(C.STAGE_TRAIN, cfg, inputs, section, body, atomic=False)
    if result.url:
        storage.remove_url(storage.checkpoints_url(cfg.run, _rel(C.STAGE_TRAIN, result.key)))
    return result


def run_evaluate(cfg: PipelineConfig, upstream: Mapping[str, StageResult]) -> StageResult:
    from sft_pipeline.evaluate import evaluate_run

    inputs, section = _inputs_and_section(C.STAGE_EVALUATE, cfg, upstream)
    dirs = {name: local_dir(cfg, res) for name, res in upstream.items()}
    return _run(C.STAGE_EVALUATE, cfg, inputs, section,
                lambda out: evaluate_run(cfg.model, dirs, out, cfg.eval, seed=cfg.run.seed))
