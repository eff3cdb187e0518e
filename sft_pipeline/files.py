"""Writing files so that no reader sees half of one, and opening a stage's Parquet input in one line."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from sft_pipeline.errors import DiskFull, InputError, disk_full_cause
from sft_pipeline.holders import MAX_AGE_S, gone, this_process

log = logging.getLogger(__name__)
HOLDER_SUFFIX = ".holder"  # beside a temporary folder: who builds it (host, pid, process start)
UNCLAIMED_AGE_S = 24 * 3600  # a temporary folder without a holder record (older code wrote none) is left this long


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` atomically.

    Concurrent writers of the same key each build their own temporary directory; the
    last rename wins and readers never observe a half-written directory. Each records who
    builds it in a holder file beside it, so that the folders of writers killed half-way
    (``kill -9``) are removed by the next writer of ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    token = uuid.uuid4().hex[:8]
    holder = final.parent / f".{final.name}.{token}{HOLDER_SUFFIX}"
    tmp, old = (final.parent / f".{final.name}.{kind}-{token}" for kind in ("tmp", "old"))
    write_json(holder, this_process())  # before the folder: a folder seen without one is not ours
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        holder.unlink(missing_ok=True)


def remove_leftovers(final: Path) -> None:
    """Remove the temporary folders of ``final`` whose writer is gone (or that are very old), with a log line."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(?:(?:tmp|old)-)?([0-9a-f]{{8}})({re.escape(HOLDER_SUFFIX)})?")
    found: dict[str, list[Path]] = {}
    for path in final.parent.glob(f".{glob.escape(final.name)}.*"):
        if match := pattern.fullmatch(path.name):
            found.setdefault(match.group(1), []).append(path)
    for token, paths in found.items():
        if why := _leftover(final, token, paths):
            log.warning("removing %s, left half-built: %s", ", ".join(p.name for p in paths), why)
            for path in paths:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _leftover(final: Path, token: str, paths: list[Path]) -> str | None:
    """Why the temporary folders of one writer are leftovers (None: its writer may still be at work)."""
    holder = final.parent / f".{final.name}.{token}{HOLDER_SUFFIX}"
    try:
        return gone(json.loads(holder.read_text()), holder.stat().st_mtime, MAX_AGE_S)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            age = time.time() - max(p.stat().st_mtime for p in paths)
            return f"no writer is recorded and it is {age / 3600:.0f} h old" if age > UNCLAIMED_AGE_S else None
        return None
    except (OSError, ValueError):  # not JSON: not a record this code wrote
        return "its holder record is unreadable"


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
