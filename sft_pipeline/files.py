"""Writing files so that no reader sees half of one, and opening a stage's Parquet input in one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from sft_pipeline.errors import DiskFull, InputError, disk_full_cause


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


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing folder), None if unknown."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            if folder.exists():
                return shutil.disk_usage(folder).free
    return None


def size_text(size: int) -> str:
    """A byte count for people.

    >>> size_text(0), size_text(1536), size_text(5 * 2**30)
    ('0 B', '1.5 KiB', '5.0 GiB')
    """
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


@contextlib.contextmanager
def disk_full_is_one_line(what: str, folder: str | Path) -> Iterator[None]:
    """A write that fails for lack of space (ENOSPC, EDQUOT) becomes one :class:`DiskFull` line naming
    ``folder`` and the space left there: not retried (a retry fills the same disk again)."""
    try:
        yield
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is None:
            raise
        named = getattr(full, "filename", None)
        free = free_bytes(folder)
        left = "unknown space" if free is None else size_text(free)
        raise DiskFull(f"{what}: no space left on the device of {folder} ({left} free"
                       + (f"; writing {named}" if named else "")
                       + "); free some space and run again (completed stages stay cached)") from None


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


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
