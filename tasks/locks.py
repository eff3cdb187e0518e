"""Stage locks that a crash cannot leave behind.

Prefect's file locks have no expiry: a run killed with SIGKILL (the OOM killer, a pre-empted
node) leaves its lock, and every later run of that stage would wait for ever. Each lock here
records its holder's host, pid and process start time; a lock whose holder is gone (same host,
no such process, or a new process under that pid) or that is older than ``MAX_LOCK_AGE_S`` is
broken with a log line, and a live holder is waited for with a periodic log line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Optional

from prefect.locking.filesystem import FileSystemLockManager

from sft_pipeline.files import write_json
from sft_pipeline.holders import MAX_AGE_S, gone, this_process
from sft_pipeline.processes import process_start  # noqa: F401 - process_start: tests

log = logging.getLogger("sft_pipeline.locks")

MAX_LOCK_AGE_S = MAX_AGE_S  # no stage holds a lock for a week: such a lock is a leftover
UNWRITTEN_LOCK_AGE_S = 60.0  # a lock file still empty after this was left by a holder killed while taking it
WAIT_LOG_EVERY_S = 30.0
POLL_S = 0.1


def stale_reason(info: dict, written: float) -> str | None:
    """Why a lock's holder is gone (None: alive, or on another host and not too old); ``written``: file mtime."""
    age = time.time() - float(info.get("created") or written)
    if not info and age > UNWRITTEN_LOCK_AGE_S:
        return f"it was never written and is {age:.0f} s old"
    return gone(info, written, MAX_LOCK_AGE_S)


class StageLockManager(FileSystemLockManager):
    """Prefect's file lock manager, with holder details in each lock and stale locks broken."""

    def _read(self, key: str) -> tuple[dict, float] | None:
        """The lock's JSON and its file's mtime; None when unlocked."""
        path = self._lock_path_for_key(key)
        try:
            text, written = path.read_text(), path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            return json.loads(text), written
        except ValueError:
            return {}, written  # taken but not written yet (Prefect touches, then writes)

    def _get_lock_info(self, key: str, use_cache: bool = True):
        """Prefect's reader, which fails on a lock file that another thread has created but not yet written."""
        try:
            return super()._get_lock_info(key, use_cache)
        except ValueError:
            return {"holder": None, "expiration": None, "path": self._lock_path_for_key(key)}

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                     hold_timeout: Optional[float] = None) -> bool:
        if not super().acquire_lock(key, holder, acquire_timeout, hold_timeout):
            return False
        path = self._lock_path_for_key(key)
        info = {"holder": holder, "expiration": None, **this_process()}
        write_json(path, info)  # atomically: readers see the old contents or the new, never an empty file
        return True

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        found = self._read(key)
        if found and (why := stale_reason(*found)):
            log.warning("breaking the lock of %s: %s", _stage_of(key), why)
            self._lock_path_for_key(key).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache)

    def wait_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        started = last_log = time.monotonic()
        while self.is_locked(key):
            now = time.monotonic()
            if timeout and now - started >= timeout:
                return False
            if now - last_log >= WAIT_LOG_EVERY_S:
                info = (self._read(key) or ({}, 0))[0]
                log.info("waiting for %s held by pid %s on %s", _stage_of(key), info.get("pid"), info.get("host"))
                last_log = now
            time.sleep(POLL_S)
        return True


def _stage_of(key: str) -> str:
    """The stage named in a cache key.

    >>> _stage_of("train-0123abcd")
    'train'
    """
    return key.rsplit("-", 1)[0]
