"""Content digests, stage cache keys, manifests and atomic output directories.

Cache keys are built from *content*: the digest of every input file, the stage's
config section and the digest of the stage's own source code. Paths and run ids
never enter a key, so identical inputs are recognised wherever they live.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from sft_pipeline.constants import MANIFEST_FILE
from sft_pipeline.errors import InputError

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHUNK = 1 << 20
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}

# Source files (relative to the package) whose content versions each stage.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest", "constants.py", "artifacts.py"),
    "score": ("score", "constants.py", "artifacts.py"),
    "filter": ("filter.py", "constants.py", "artifacts.py"),
    "tokenize": ("tokenize", "models.py", "constants.py", "artifacts.py"),
    "train": ("train", "models.py", "constants.py", "artifacts.py"),
    "evaluate": ("evaluate", "models.py", "constants.py", "artifacts.py"),
}

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "pandas", "pyarrow")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``.

    >>> sha256_bytes(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()


def json_digest(obj: Any) -> str:
    """Digest of a JSON-able object, independent of key order.

    >>> json_digest({"a": 1, "b": 2}) == json_digest({"b": 2, "a": 1})
    True
    """
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised on (path, size, mtime) within a process."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        _FILE_DIGESTS[memo_key] = h.hexdigest()
    return _FILE_DIGESTS[memo_key]


def path_digest(path: str | Path) -> str:
    """Digest of a file, or of a directory tree (relative names + file digests)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    entries = [
        (str(p.relative_to(path)), file_digest(p))
        for p in sorted(path.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    return json_digest(entries)


def code_version(stage: str) -> str:
    """Digest of the source files implementing ``stage`` (any edit invalidates its cache)."""
    parts = []
    for rel in STAGE_CODE[stage]:
        target = _PACKAGE_DIR / rel
        if target.exists():
            parts.append((rel, path_digest(target)))
    return json_digest(parts)[:16]


def stage_key(stage: str, input_digests: Mapping[str, str], config: Any) -> str:
    """The cache key of one stage run: inputs' content + config section + code version."""
    return json_digest(
        {"stage": stage, "inputs": dict(input_digests), "config": config, "code": code_version(stage)}
    )


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` atomically.

    Concurrent writers of the same key each build their own temporary directory; the
    last rename wins and readers never observe a half-written directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_manifest(
    out_dir: Path,
    stage: str,
    *,
    key: str,
    inputs: Mapping[str, str],
    config: Any,
    counts: Mapping[str, Any],
    started: float,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Write ``manifest.json`` describing one stage run and return it."""
    manifest = {
        "stage": stage,
        "key": key,
        "code_version": code_version(stage),
        "inputs": dict(inputs),
        "config": config,
        "counts": dict(counts),
        "libraries": library_versions(),
        "duration_s": round(time.time() - started, 3),
        **(dict(extra) if extra else {}),
    }
    write_json(Path(out_dir) / MANIFEST_FILE, manifest)
    return manifest


def open_parquet(path: str | Path, required: tuple[str, ...] = (), hint: str = ""):
    """Open a stage's Parquet input; a missing file, bad file or missing column is one InputError line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    missing = [c for c in required if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    return pf


def read_manifest(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text())
