"""Stage outputs on an fsspec URL (``run.output_dir: s3://bucket/runs``): work locally, publish, fetch.

A stage writes into a local working copy (``run.local_dir``) as it always does; once it has
finished, its folder is uploaded to the same relative path under the URL, ``manifest.json``
last, so a manifest at the URL means a complete output. A stage running on another machine
fetches the outputs it reads (by stage and key) before using them. With a plain path for
``run.output_dir`` every function here is a no-op and outputs stay where they are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from pathlib import Path

from sft_pipeline import constants
from sft_pipeline.config import RunConfig
from sft_pipeline.resources import cache_root
from sft_pipeline.urls import is_url


def is_remote(run: RunConfig) -> bool:
    return is_url(run.output_dir)


def local_root(run: RunConfig) -> Path:
    """Where stage outputs are written: ``output_dir`` itself, or the working copy of the URL."""
    if not is_remote(run):
        return Path(run.output_dir)
    if run.local_dir:
        return Path(run.local_dir)
    return cache_root() / "outputs" / hashlib.sha256(run.output_dir.encode()).hexdigest()[:12]


def url_of(run: RunConfig, rel: str) -> str:
    """The URL of ``rel`` (a path relative to the output root).

    >>> url_of(RunConfig(output_dir="memory://bucket/runs/"), "score/abc")
    'memory://bucket/runs/score/abc'
    """
    return f"{run.output_dir.rstrip('/')}/{rel}"


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def publish(run: RunConfig, rel: str) -> str | None:
    """Upload the local folder ``rel`` to the URL, manifest last; return its URL (None: local run).

    Training checkpoints are left out: they are mirrored on their own while training runs
    (:func:`checkpoints_url`) and are not part of the finished output.
    """
    if not is_remote(run):
        return None
    src, url = local_root(run) / rel, url_of(run, rel)
    fs, root = _fs(url)
    if fs.exists(root) and not fs.exists(f"{root}/{constants.MANIFEST_FILE}"):
        fs.rm(root, recursive=True)  # leftovers of an upload that died before its manifest
    files = [p for p in src.rglob("*") if p.is_file() and constants.CHECKPOINTS_DIR not in p.relative_to(src).parts]
    _upload_tree(fs, src, files, root, last=constants.MANIFEST_FILE)
    return url


def _upload_tree(fs, src: Path, files: list[Path], root: str, *, last: str) -> None:
    """Upload ``files`` (under ``src``) to the same relative paths under ``root``, ``last`` after all others."""
    _put(fs, [(str(p), f"{root}/{p.relative_to(src).as_posix()}") for p in sorted(files, key=lambda p: p.name == last)])


def _download_tree(fs, root: str, dest: Path, *, last: str) -> None:
    """Download every file under ``root`` to the same relative paths under ``dest``, ``last`` after all others."""
    for remote in sorted(fs.find(root), key=lambda p: p.endswith("/" + last)):
        target = dest / remote[len(root.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))


def _put(fs, pairs: list[tuple[str, str]]) -> None:
    """Upload (local, remote) pairs in order; folders are made once each, where folders exist."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        for folder in dict.fromkeys(target.rsplit("/", 1)[0] for _, target in pairs):
            fs.makedirs(folder, exist_ok=True)
    for local, target in pairs:
        fs.put_file(local, target)


def publish_file(run: RunConfig, rel: str) -> str:
    """Upload one local file (``rel`` under the local root); return its URL, or its local path."""
    local = local_root(run) / rel
    if not is_remote(run):
        return str(local)
    fs, target = _fs(url_of(run, rel))
    _put(fs, [(str(local), target)])
    return url_of(run, rel)


def fetch_file(run: RunConfig, location: str) -> Path:
    """A local path for ``location`` (a local path, or a URL under the output root)."""
    if not is_url(location):
        return Path(location)
    local = local_root(run) / location[len(run.output_dir.rstrip("/")) + 1:]
    if not local.exists():
        fs, path = _fs(location)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
        try:
            fs.get_file(path, str(tmp))
            tmp.replace(local)  # atomic; a concurrent fetch of the same file writes the same bytes
        finally:
            tmp.unlink(missing_ok=True)
    return local


def is_published(run: RunConfig, rel: str) -> bool:
    if not is_remote(run):
        return False
    fs, root = _fs(url_of(run, rel))
    return fs.exists(f"{root}/{constants.MANIFEST_FILE}")


def published_manifest(run: RunConfig, rel: str) -> dict | None:
    """The manifest of output ``rel`` at the URL (one small read), None for a local run or none there."""
    if not is_remote(run):
        return None
    fs, root = _fs(url_of(run, rel))
    try:
        return json.loads(fs.cat_file(f"{root}/{constants.MANIFEST_FILE}"))
    except (FileNotFoundError, ValueError):
        return None


def problem(run: RunConfig, rel: str, manifest: dict) -> str | None:
    """Why the published output ``rel`` may not be served: a listed file missing or of another size."""
    fs, root = _fs(url_of(run, rel))
    for name, record in manifest.get("files", {}).items():
        try:
            size = fs.size(f"{root}/{name}")
        except FileNotFoundError:
            return f"{name} is missing at the URL"
        if size != record["size"]:
            return f"{name} has {size} bytes at the URL, {record['size']} recorded"
    return None if "files" in manifest else "its manifest is of an older format"


def discard_local(run: RunConfig, rel: str) -> None:
    """Set aside and delete the local copy of ``rel`` (incomplete; the published one replaces it)."""
    _set_aside(local_root(run) / rel)


def _set_aside(local: Path) -> None:
    aside = local.with_name(f".{local.name}.stale-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(OSError):
        local.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def fetch(run: RunConfig, rel: str) -> bool:
    """Make the complete output ``rel`` present locally; False when it exists nowhere.

    Safe when several processes on one machine fetch the same output at once: each
    downloads into its own folder, and the first complete copy moved into place wins.
    """
    local = local_root(run) / rel
    if (local / constants.MANIFEST_FILE).exists():
        return True
    if not is_published(run, rel):
        return False
    fs, root = _fs(url_of(run, rel))
    tmp = local.with_name(f".{local.name}.fetch-{uuid.uuid4().hex[:8]}")
    try:
        _download_tree(fs, root, tmp, last=constants.MANIFEST_FILE)
        _move_into_place(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _move_into_place(tmp: Path, local: Path) -> None:
    """Rename ``tmp`` to ``local`` unless a complete copy got there first; an incomplete one is set aside."""
    if (local / constants.MANIFEST_FILE).exists():
        return
    if local.exists():  # a killed local run's leftovers: the published copy wins
        _set_aside(local)
    try:
        tmp.rename(local)
    except OSError:
        if not (local / constants.MANIFEST_FILE).exists():  # lost the race to an incomplete copy: a real error
            raise


def remove(run: RunConfig, rel: str) -> None:
    """Delete ``rel`` locally and at the URL (scratch folders)."""
    shutil.rmtree(local_root(run) / rel, ignore_errors=True)
    if is_remote(run):
        remove_url(url_of(run, rel))


# Training checkpoints on the URL, so that a retry on another machine resumes instead of starting over.
# They live beside the outputs (``<url>/.checkpoints/train/<key>/checkpoint-<step>/``), not inside the
# train output, whose folder at the URL is replaced whole when it is published.
CHECKPOINTS_ROOT = ".checkpoints"


def checkpoints_url(run: RunConfig, rel: str) -> str | None:
    """Where the checkpoints of stage output ``rel`` are mirrored; None for a local run."""
    return url_of(run, f"{CHECKPOINTS_ROOT}/{rel}") if is_remote(run) else None


def push_folder(local: Path, url: str, *, last: str) -> None:
    """Replace ``url`` with a copy of ``local``, the file named ``last`` uploaded after all others."""
    remove_url(url)  # no stale files of an earlier, interrupted upload
    fs, root = _fs(url)
    _upload_tree(fs, local, [p for p in local.rglob("*") if p.is_file()], root, last=last)


def subfolders(url: str) -> list[str]:
    """Names of the folders directly under ``url`` (none if it does not exist)."""
    fs, root = _fs(url)
    fs.invalidate_cache(root)  # s3fs/gcsfs cache listings in long-lived workers
    if not fs.exists(root):
        return []
    return [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=True)
            if entry["type"] == "directory"]


def exists(url: str) -> bool:
    fs, path = _fs(url)
    fs.invalidate_cache(path)
    return fs.exists(path)


def pull_folder(url: str, local: Path, *, last: str) -> bool:
    """Download ``url`` into ``local`` (a new folder), ``last`` after all other files, atomically
    by rename; False (nothing left behind) if ``last`` was gone by then: the copy was being replaced."""
    fs, root = _fs(url)
    tmp = local.with_name(f".{local.name}.fetch-{uuid.uuid4().hex[:8]}")
    try:
        _download_tree(fs, root, tmp, last=last)
        if not (tmp / last).is_file():
            return False
        tmp.rename(local)
        return True
    except FileNotFoundError:  # deleted while listed
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_url(url: str) -> None:
    fs, root = _fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
