"""Where stage outputs live: one :class:`Store`, chosen once from ``run.output_dir`` by :func:`store_of`.

With a plain path, outputs are written where they live and there is nothing to publish or fetch
(:class:`Store`). With an fsspec URL (``run.output_dir: s3://bucket/runs``, :class:`UrlStore`), a
stage writes into a local working copy (``run.local_dir``) as it always does; once it has
finished, its folder is uploaded to the same relative path under the URL, ``manifest.json``
last, so a manifest at the URL means a complete output. A stage running on another machine
fetches the outputs it reads (by stage and key) before using them. Below the stores, plain
URL helpers (push, pull, list) serve the training checkpoints mirrored while training runs.
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
from sft_pipeline.manifest import shape_problem
from sft_pipeline.resources import cache_root
from sft_pipeline.urls import is_url

# Training checkpoints on the URL, so that a retry on another machine resumes instead of starting over.
# They live beside the outputs (``<url>/.checkpoints/train/<key>/checkpoint-<step>/``), not inside the
# train output, whose folder at the URL is replaced whole when it is published.
CHECKPOINTS_ROOT = ".checkpoints"


class Store:
    """Outputs in a folder on this machine (or a shared mount): each is written where it lives.

    Every method takes ``rel``, a path relative to the output root (``score/<key16>``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root  # where outputs are written on this machine

    def folder(self, rel: str) -> Path:
        return self.root / rel

    def url(self, rel: str) -> str | None:
        """Where ``rel`` is published; None: nowhere but here."""
        return None

    def published(self, rel: str, key: str) -> dict | None:
        """The manifest of the complete published copy of ``rel`` at ``key`` (None: there is none)."""
        return None

    def publish(self, rel: str) -> str | None:
        """After a stage: publish its output ``rel``; return its URL (None: nowhere to publish)."""
        return None

    def published_url(self, rel: str) -> str | None:
        """The URL of a complete output ``rel`` here, publishing it first if it is not there yet."""
        return None

    def discard(self, rel: str) -> None:
        """Set aside and delete the local copy of ``rel`` (incomplete; a published one replaces it)."""
        local = self.folder(rel)
        aside = local.with_name(f".{local.name}.stale-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            local.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)

    def fetch(self, rel: str) -> bool:
        """Make the complete output ``rel`` present here; False when it exists nowhere."""
        return (self.folder(rel) / constants.MANIFEST_FILE).exists()

    def checkpoints_url(self, rel: str) -> str | None:
        """Where the checkpoints of stage output ``rel`` are mirrored while it is written; None: not mirrored."""
        return None

    def publish_file(self, rel: str) -> str:
        """Publish one file written at ``rel``; return where others read it (its URL, or its path)."""
        return str(self.folder(rel))

    def fetch_file(self, location: str) -> Path:
        """A local path for ``location`` (a path here, or a URL under the output root)."""
        return Path(location)

    def remove(self, rel: str) -> None:
        """Delete ``rel`` here and wherever it is published (scratch folders)."""
        shutil.rmtree(self.folder(rel), ignore_errors=True)


class UrlStore(Store):
    """Outputs at an fsspec URL, written in a local working copy and published once complete, manifest last."""

    def __init__(self, root: Path, base_url: str) -> None:
        super().__init__(root)
        self.base_url = base_url.rstrip("/")

    def url(self, rel: str) -> str:
        """The URL of ``rel``.

        >>> UrlStore(Path("/w"), "memory://bucket/runs/").url("score/abc")
        'memory://bucket/runs/score/abc'
        """
        return f"{self.base_url}/{rel}"

    def published(self, rel: str, key: str) -> dict | None:
        fs, root = _fs(self.url(rel))
        try:
            manifest = json.loads(fs.cat_file(f"{root}/{constants.MANIFEST_FILE}"))
        except (FileNotFoundError, ValueError):
            return None
        if shape_problem(manifest) is not None or manifest["key"] != key:
            return None
        for name, record in manifest["files"].items():  # a listed file missing or of another size: incomplete
            try:
                if fs.size(f"{root}/{name}") != record["size"]:
                    return None
            except FileNotFoundError:
                return None
        return manifest

    def publish(self, rel: str) -> str:
        """Upload the local folder ``rel``, manifest last. Training checkpoints are left out: they are mirrored
        on their own while training runs (:meth:`checkpoints_url`) and are not part of the finished output."""
        src, url = self.folder(rel), self.url(rel)
        fs, root = _fs(url)
        if fs.exists(root) and not fs.exists(f"{root}/{constants.MANIFEST_FILE}"):
            fs.rm(root, recursive=True)  # leftovers of an upload that died before its manifest
        files = [p for p in src.rglob("*")
                 if p.is_file() and constants.CHECKPOINTS_DIR not in p.relative_to(src).parts]
        _upload_tree(fs, src, files, root, last=constants.MANIFEST_FILE)
        return url

    def published_url(self, rel: str) -> str:
        return self.url(rel) if self._has_manifest(rel) else self.publish(rel)

    def _has_manifest(self, rel: str) -> bool:
        fs, root = _fs(self.url(rel))
        return fs.exists(f"{root}/{constants.MANIFEST_FILE}")

    def fetch(self, rel: str) -> bool:
        """Safe when several processes on one machine fetch the same output at once: each downloads into its
        own folder, and the first complete copy moved into place wins."""
        local = self.folder(rel)
        if (local / constants.MANIFEST_FILE).exists():
            return True
        if not self._has_manifest(rel):
            return False
        fs, root = _fs(self.url(rel))
        tmp = local.with_name(f".{local.name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            _download_tree(fs, root, tmp, last=constants.MANIFEST_FILE)
            self._move_into_place(tmp, rel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def _move_into_place(self, tmp: Path, rel: str) -> None:
        """Rename ``tmp`` to ``rel`` unless a complete copy got there first; an incomplete one is set aside."""
        local = self.folder(rel)
        if (local / constants.MANIFEST_FILE).exists():
            return
        if local.exists():  # a killed local run's leftovers: the published copy wins
            self.discard(rel)
        try:
            tmp.rename(local)
        except OSError:
            if not (local / constants.MANIFEST_FILE).exists():  # lost the race to an incomplete copy: a real error
                raise

    def checkpoints_url(self, rel: str) -> str:
        return self.url(f"{CHECKPOINTS_ROOT}/{rel}")

    def publish_file(self, rel: str) -> str:
        fs, target = _fs(self.url(rel))
        _put(fs, [(str(self.folder(rel)), target)])
        return self.url(rel)

    def fetch_file(self, location: str) -> Path:
        if not is_url(location):
            return Path(location)
        local = self.folder(location[len(self.base_url) + 1:])
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

    def remove(self, rel: str) -> None:
        super().remove(rel)
        remove_url(self.url(rel))


def store_of(run: RunConfig) -> Store:
    """Where ``run``'s outputs live: a folder, or a URL with its local working copy (``run.local_dir``, or one
    under the cache named after the URL)."""
    if not is_url(run.output_dir):
        return Store(Path(run.output_dir))
    local = Path(run.local_dir) if run.local_dir else \
        cache_root() / "outputs" / hashlib.sha256(run.output_dir.encode()).hexdigest()[:12]
    return UrlStore(local, run.output_dir)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


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
