"""The one owner of stage caching: a stage's key, whether it is done, and run-or-reuse.

``run`` computes the key from content (see ``sft_pipeline.stages``), serves a complete earlier
output if there is one (here, or at ``run.output_dir``'s URL), and otherwise runs the stage's
entry into ``<output root>/<stage>/<key16>/`` (atomically, through a temporary folder, unless the
stage writes in place) and writes ``manifest.json`` last, with the size and digest of every file.
Prefect's cache policy (``tasks/caching.py``) asks :func:`is_complete` the same question.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from pydantic import BaseModel

from sft_pipeline import manifest as manifests
from sft_pipeline import storage
from sft_pipeline.artifacts import file_digest, path_digest, stage_key
from sft_pipeline.config import PipelineConfig
from sft_pipeline.config.tree import settings
from sft_pipeline.constants import MANIFEST_FILE, PACKAGE_SCHEME
from sft_pipeline.errors import InputError
from sft_pipeline.files import atomic_dir, disk_full_is_one_line
from sft_pipeline.resources import resolve_path
from sft_pipeline.stages import KEY_CHARS, Stage, StageResult, StageRun

log = logging.getLogger(__name__)

DIGEST_CHECK_BYTES = 256 * 2**20  # files up to this size are re-hashed before being served from cache


def _section(cfg: PipelineConfig, dotted: str) -> Any:
    value: Any = cfg
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def config_part(stage: Stage, cfg: PipelineConfig) -> dict[str, Any]:
    """The values of the stage's config sections, as JSON, less those it declares outside its key."""
    unkeyed = stage.unkeyed(cfg)
    part = {}
    for dotted in stage.sections:
        value = _section(cfg, dotted)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude=_exclusions(dotted, unkeyed) or None)
        part[dotted] = value
    return part


def _exclusions(section: str, paths: set[str]) -> dict:
    """``model_dump``'s nested ``exclude`` for the dotted ``paths`` under ``section``.

    >>> _exclusions("train", {"train.work_pool", "train.lora.dropout", "eval.batch_size"})
    {'lora': {'dropout': True}, 'work_pool': True}
    """
    tree: dict = {}
    for path in sorted(paths):
        if not path.startswith(section + "."):
            continue
        *parents, leaf = path[len(section) + 1:].split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = True
    return tree


def names_a_file(value: Any, declared: bool) -> bool:
    """Whether a config value names a file or folder here: a ``package:`` spec, or a path that exists. A field
    declared to name files (``config.base.FILE``) counts however it is spelled (``data.jsonl``, ``./t.jinja``);
    any other string counts when it holds a slash (a word such as ``train`` may be a folder's name too).

    >>> names_a_file("package:x/y", False), names_a_file("chatml", True), names_a_file("/no/such/file", True)
    (True, False, False)
    >>> names_a_file("sft_pipeline", True), names_a_file("sft_pipeline", False)
    (True, False)
    """
    if not isinstance(value, str) or not value:
        return False
    if value.startswith(PACKAGE_SCHEME):
        return True
    return (declared or "/" in value or os.sep in value) and Path(value).expanduser().exists()


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def named_files(stage: Stage, cfg: PipelineConfig) -> dict[str, str]:
    """Content digests of the files and folders that the stage's config values name, by dotted key."""
    found = {}
    for dotted in stage.sections:
        section = _section(cfg, dotted)
        if isinstance(section, BaseModel):
            found.update({where: path_digest(resolve_path(value)) for s in settings(section, f"{dotted}.")
                          for where, value in _strings(s.value, s.key) if names_a_file(value, s.names_a_file)})
    return found


def inputs(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult]) -> dict[str, str]:
    """Digests of what the stage reads: upstream files (from their manifests) and files the config names."""
    digests = {f"{name}/{file}": upstream[name].digest(file)
               for name, files in stage.reads_given(upstream).items() for file in files}
    return {**digests, **named_files(stage, cfg)}


def key(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult] | None = None) -> str:
    return stage_key(stage.name, inputs(stage, cfg, upstream or {}), config_part(stage, cfg), stage.code_version)


def relative_folder(stage: str, cache_key: str) -> str:
    """Where the output of ``stage`` at ``cache_key`` lives under the output root (``score/<key16>``)."""
    return f"{stage}/{cache_key[:KEY_CHARS]}"


def stage_dir(cfg: PipelineConfig, stage: str, cache_key: str) -> Path:
    return storage.store_of(cfg.run).folder(relative_folder(stage, cache_key))


def why_incomplete(folder: Path, manifest: Mapping[str, Any], cache_key: str) -> str | None:
    """Why a local output may not be served (None: complete and as recorded)."""
    if manifest["key"] != cache_key:
        return "its manifest is for another key"
    for name, record in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record["size"]:
            return f"{name} has {size} bytes, {record['size']} recorded"
        if size <= DIGEST_CHECK_BYTES and file_digest(path) != record["sha256"]:
            return f"{name} differs from its recorded digest"
    return None


def complete_output(stage: Stage, cfg: PipelineConfig, cache_key: str,
                    store: storage.Store | None = None) -> StageResult | None:
    """The complete output of ``stage`` at ``cache_key``, here or published; None (and why, logged) if none."""
    store = store or storage.store_of(cfg.run)
    rel = relative_folder(stage.name, cache_key)
    folder = store.folder(rel)
    manifest, why = manifests.read(folder)
    if manifest is not None and (why := why_incomplete(folder, manifest, cache_key)) is None:
        return result_of(manifest, folder, store.published_url(rel))
    if (published := store.published(rel, cache_key)) is not None:
        if folder.exists():
            store.discard(rel)  # an incomplete local copy must not shadow the published one
        return result_of(published, folder, store.url(rel))
    if folder.exists():
        log.warning("%s output %s is incomplete (%s): recomputing it", stage.name, cache_key[:KEY_CHARS], why)
    return None


def result_of(manifest: Mapping[str, Any], folder: Path, url: str | None) -> StageResult:
    """The result a (checked) manifest describes, its output in ``folder`` here and at ``url``."""
    return StageResult(stage=manifest["stage"], key=manifest["key"], out_dir=str(folder), url=url,
                       files={n: r["sha256"] for n, r in manifest["files"].items()},
                       counts=manifest.get("counts") or {}, details=manifest.get("details") or {})


def is_complete(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult] | None = None) -> bool:
    """Whether the stage's output at its current key is complete (the one answer; Prefect asks it too)."""
    return complete_output(stage, cfg, key(stage, cfg, upstream)) is not None


def _make_parent(folder: Path) -> None:
    """The stage's folder under the output root; a path the file system refuses is one line, not retried."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the stage output folder ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _in_place(folder: Path) -> Iterator[Path]:
    """The folder itself, without a stale manifest (a stage written in place keeps its checkpoints)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    yield folder


def run(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult] | None = None,
        **extra: Any) -> StageResult:
    """Serve the stage's complete output at its current key, or compute it."""
    upstream, store = upstream or {}, storage.store_of(cfg.run)
    cache_key = key(stage, cfg, upstream)
    found = complete_output(stage, cfg, cache_key, store)
    if found is not None:
        return found
    rel = relative_folder(stage.name, cache_key)
    folder, checkpoints = store.folder(rel), None if stage.atomic else store.checkpoints_url(rel)
    sources = {name: output_folder(cfg, result) for name, result in upstream.items()}
    started = time.time()
    _make_parent(folder)
    with disk_full_is_one_line(stage.name, folder), (atomic_dir(folder) if stage.atomic else _in_place(folder)) as out:
        try:
            summary = stage.function()(StageRun(cfg, out, sources, cache_key, checkpoints, extra))
        except Exception:
            if (why := changed_input(stage, upstream, sources)) is None:
                raise
            raise InputError(f"{stage.name}: {why}") from None
        manifest = manifests.write(stage, out, cache_key, inputs(stage, cfg, upstream), config_part(stage, cfg),
                                   summary, started)
    url = store.publish(rel)
    if checkpoints and url:
        storage.remove_url(checkpoints)
    return result_of(manifest, folder, url)


def changed_input(stage: Stage, upstream: Mapping[str, StageResult], sources: Mapping[str, Path]) -> str | None:
    """After a stage failed: the first file it read whose bytes differ from its upstream manifest (files over
    ``DIGEST_CHECK_BYTES`` are served on their size alone). That output's manifest is removed, so the next run
    recomputes it instead of serving it again; None when every input is as recorded (the failure is the stage's)."""
    for name, wanted in stage.reads_given(upstream).items():
        if not wanted or name not in upstream:  # read for context only (the report's tables)
            continue
        prefixes = tuple(w.rstrip("/") + "/" for w in wanted)
        for recorded, digest in upstream[name].files.items():
            path = sources[name] / recorded
            if (recorded in wanted or recorded.startswith(prefixes)) and \
                    (not path.is_file() or file_digest(path, fresh=True) != digest):
                (sources[name] / MANIFEST_FILE).unlink(missing_ok=True)
                return f"{path} changed after the {name} stage wrote it: this copy is discarded, and the next run " \
                       f"recomputes it (or fetches the published copy again when run.output_dir is a URL)"
    return None


def load(stage: Stage, cfg: PipelineConfig, cache_key: str) -> StageResult:
    """The complete stored output of ``stage`` at ``cache_key``, or one line saying there is none."""
    found = complete_output(stage, cfg, cache_key)
    if found is None:
        raise InputError(f"no complete {stage.name} output {cache_key[:KEY_CHARS]} under {cfg.run.output_dir}")
    return found


def output_folder(cfg: PipelineConfig, result: StageResult) -> Path:
    """The folder of a finished stage's output on this machine: where it was written, or fetched from where it
    was published."""
    if result.url is None:
        return Path(result.out_dir)
    store, rel = storage.store_of(cfg.run), relative_folder(result.stage, result.key)
    if not store.fetch(rel):
        raise InputError(f"{result.stage} output {result.key[:KEY_CHARS]} found neither in {store.folder(rel)} "
                         f"nor at {result.url}")
    return store.folder(rel)
