"""The one owner of stage caching: a stage's key, whether it is done, and run-or-reuse.

``run`` computes the key from content (see ``sft_pipeline.stages``), serves a complete earlier
output if there is one (here, or at ``run.output_dir``'s URL), and otherwise runs the stage's
entry into ``<output root>/<stage>/<key16>/`` (atomically, through a temporary folder, unless the
stage writes in place) and writes ``manifest.json`` last, with the size and digest of every file.
Prefect's cache policy (``tasks/caching.py``) asks :func:`done` the same question.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from sft_pipeline import storage
from sft_pipeline.artifacts import file_digest, file_records, library_versions, path_digest, read_manifest, stage_key
from sft_pipeline.config import PipelineConfig
from sft_pipeline.constants import CHECKPOINTS_DIR, MANIFEST_FILE, PACKAGE_SCHEME
from sft_pipeline.errors import InputError
from sft_pipeline.files import atomic_dir, disk_full_is_one_line, write_json
from sft_pipeline.resources import resolve_path
from sft_pipeline.stages import KEY_CHARS, Stage, StageResult, StageRun

log = logging.getLogger(__name__)

DIGEST_CHECK_BYTES = 256 * 2**20  # files up to this size are re-hashed before being served from cache
RESULT_FIELDS = ("verdict", "method")  # summary keys that are fields of their own, not counts


def config_part(stage: Stage, cfg: PipelineConfig) -> dict[str, Any]:
    """The values of the stage's config sections, as JSON (fields a section keeps out of keys left out)."""
    part = {}
    for dotted in stage.sections:
        value: Any = cfg
        for name in dotted.split("."):
            value = getattr(value, name)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json", exclude=getattr(value, "outside_key", lambda: set())())
        part[dotted] = value
    return part


def _names_a_file(value: str) -> bool:
    """Whether a config string names a file or folder (a path or a ``package:`` spec), not a word or hub id.

    >>> _names_a_file("package:x/y"), _names_a_file("chatml"), _names_a_file("/no/such/file")
    (True, False, False)
    """
    if value.startswith(PACKAGE_SCHEME):
        return True
    return ("/" in value or os.sep in value) and Path(value).expanduser().exists()


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def named_files(part: Mapping[str, Any]) -> dict[str, str]:
    """Content digests of the files and folders that config values name, by dotted path."""
    return {where: path_digest(resolve_path(value)) for dotted, section in part.items()
            for where, value in _strings(section, dotted) if _names_a_file(value)}


def inputs(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult]) -> dict[str, str]:
    """Digests of what the stage reads: upstream files (from their manifests) and files the config names."""
    digests = {f"{name}/{file}": upstream[name].digest(file) for name, files in stage.reads.items() for file in files}
    return {**digests, **named_files(config_part(stage, cfg))}


def key(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult] | None = None) -> str:
    return stage_key(stage.name, inputs(stage, cfg, upstream or {}), config_part(stage, cfg), stage.code_version)


def rel(stage: str, key_: str) -> str:
    return f"{stage}/{key_[:KEY_CHARS]}"


def stage_dir(cfg: PipelineConfig, stage: str, key_: str) -> Path:
    return storage.local_root(cfg.run) / rel(stage, key_)


def problem(folder: Path, manifest: Mapping[str, Any], key_: str) -> str | None:
    """Why a local output may not be served (None: complete and as recorded)."""
    if manifest.get("key") != key_ or "files" not in manifest:
        return "its manifest is for another key or an older format"
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


def _local_manifest(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except (OSError, ValueError):
        return None


def find(stage: Stage, cfg: PipelineConfig, key_: str) -> StageResult | None:
    """The complete output of ``stage`` at ``key_``, here or at the output URL; None (and why, logged) if none."""
    folder, where = stage_dir(cfg, stage.name, key_), rel(stage.name, key_)
    manifest = _local_manifest(folder)
    why = problem(folder, manifest, key_) if manifest is not None else "no manifest"
    if why is None:
        return result_of(manifest, folder, _published(cfg, where))
    remote = storage.published_manifest(cfg.run, where)
    if remote is not None and remote.get("key") == key_ and storage.problem(cfg.run, where, remote) is None:
        if folder.exists():
            storage.discard_local(cfg.run, where)  # an incomplete local copy must not shadow the published one
        return result_of(remote, folder, storage.url_of(cfg.run, where))
    if folder.exists():
        log.warning("%s output %s is incomplete (%s): recomputing it", stage.name, key_[:KEY_CHARS], why)
    return None


def _published(cfg: PipelineConfig, where: str) -> str | None:
    """The URL of a complete local output, uploading it first if it is not there yet (None: local run)."""
    if not storage.is_remote(cfg.run):
        return None
    return storage.url_of(cfg.run, where) if storage.is_published(cfg.run, where) else storage.publish(cfg.run, where)


def done(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, StageResult] | None = None) -> bool:
    """Whether the stage's output at its current key is complete (the one answer; Prefect asks it too)."""
    return find(stage, cfg, key(stage, cfg, upstream)) is not None


def split_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's summary as counts (numbers only), verdict, method and details (the rest).

    >>> split_summary({"rows": 3, "method": "threshold", "sweep": [1], "ok": True})
    {'counts': {'rows': 3}, 'verdict': None, 'method': 'threshold', 'details': {'sweep': [1], 'ok': True}}
    """
    rest = dict(summary)
    fields = {name: rest.pop(name, None) for name in RESULT_FIELDS}
    counts = {k: v for k, v in rest.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"counts": counts, **fields, "details": {k: v for k, v in rest.items() if k not in counts}}


def result_of(manifest: Mapping[str, Any], folder: Path, url: str | None) -> StageResult:
    return StageResult(stage=manifest["stage"], key=manifest["key"], out_dir=str(folder), url=url,
                       files={n: r["sha256"] for n, r in manifest["files"].items()},
                       **{name: manifest.get(name) for name in ("counts", *RESULT_FIELDS, "details")})


def write_manifest(stage: Stage, folder: Path, key_: str, digests: Mapping[str, str], config: Any,
                   summary: Mapping[str, Any], started: float) -> dict:
    """Write ``manifest.json`` last: key, inputs, config, code version, summary and every file's size and digest."""
    missing = [name for name in stage.writes if not (folder / name).exists()]
    if missing:
        raise InputError(f"{stage.name} stage wrote no {', '.join(missing)} in {folder}")
    manifest = {"stage": stage.name, "key": key_, "code_version": stage.code_version, "inputs": dict(digests),
                "config": config, **split_summary(summary), "libraries": library_versions(),
                "duration_s": round(time.time() - started, 3),
                "files": file_records(folder, skip=(MANIFEST_FILE, CHECKPOINTS_DIR))}
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest


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
    upstream = upstream or {}
    key_ = key(stage, cfg, upstream)
    found = find(stage, cfg, key_)
    if found is not None:
        return found
    folder, where = stage_dir(cfg, stage.name, key_), rel(stage.name, key_)
    checkpoints = None if stage.atomic else storage.checkpoints_url(cfg.run, where)
    sources = {name: output_folder(cfg, result) for name, result in upstream.items()}
    started = time.time()
    _make_parent(folder)
    with disk_full_is_one_line(stage.name, folder), (atomic_dir(folder) if stage.atomic else _in_place(folder)) as out:
        try:
            summary = stage.function()(StageRun(cfg, out, sources, key_, checkpoints, extra))
        except Exception:
            if (why := changed_input(stage, upstream, sources)) is None:
                raise
            raise InputError(f"{stage.name}: {why}") from None
        manifest = write_manifest(stage, out, key_, inputs(stage, cfg, upstream), config_part(stage, cfg),
                                  summary, started)
    url = storage.publish(cfg.run, where)
    if checkpoints and url:
        storage.remove_url(checkpoints)
    return result_of(manifest, folder, url)


def changed_input(stage: Stage, upstream: Mapping[str, StageResult], sources: Mapping[str, Path]) -> str | None:
    """After a stage failed: the first file it read whose bytes differ from its upstream manifest (files over
    ``DIGEST_CHECK_BYTES`` are served on their size alone). That output's manifest is removed, so the next run
    recomputes it instead of serving it again; None when every input is as recorded (the failure is the stage's)."""
    for name, wanted in stage.reads.items():
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


def load(stage: Stage, cfg: PipelineConfig, key_: str) -> StageResult:
    """The complete stored output of ``stage`` at ``key_``, or one line saying there is none."""
    found = find(stage, cfg, key_)
    if found is None:
        raise InputError(f"no complete {stage.name} output {key_[:KEY_CHARS]} under {cfg.run.output_dir}")
    return found


def output_folder(cfg: PipelineConfig, result: StageResult) -> Path:
    """The folder of a finished stage's output on this machine (fetched from the URL if need be)."""
    if not storage.is_remote(cfg.run):
        return Path(result.out_dir)
    where = rel(result.stage, result.key)
    if not storage.fetch(cfg.run, where):
        raise InputError(f"{result.stage} output {result.key[:KEY_CHARS]} found neither in "
                         f"{stage_dir(cfg, result.stage, result.key)} nor at {storage.url_of(cfg.run, where)}")
    return stage_dir(cfg, result.stage, result.key)
