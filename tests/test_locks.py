"""Stage locks: a holder killed with SIGKILL never makes a later run hang; a live one is waited for, audibly."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import locks
from tasks.locks import StageLockManager

ROOT = Path(__file__).resolve().parents[1]
KEY = "train-0123456789abcdef"
HOLD = """
import sys, time
from pathlib import Path
from tasks.locks import StageLockManager
manager = StageLockManager(Path(sys.argv[1]))
assert manager.acquire_lock(sys.argv[2], holder="other-run")
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
manager.release_lock(sys.argv[2], holder="other-run")
"""


def hold_lock(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), KEY, str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_lock_whose_holder_was_killed_is_broken_with_a_log_line(tmp_path, caplog):
    proc = hold_lock(tmp_path, 600)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manager = StageLockManager(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sft_pipeline.locks"):
        started = time.monotonic()
        assert manager.acquire_lock(KEY, holder="this-run", acquire_timeout=10)
    assert time.monotonic() - started < 5
    assert f"breaking the lock of train: its holder, pid {proc.pid}, is gone" in caplog.text
    info = json.loads((tmp_path / f"{KEY}.lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] and info["start"]


def test_a_live_holder_is_waited_for_with_a_periodic_line(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(locks, "WAIT_LOG_EVERY_S", 0.2)
    proc = hold_lock(tmp_path, 1.5)
    manager = StageLockManager(tmp_path)
    with caplog.at_level(logging.INFO, logger="sft_pipeline.locks"):
        assert manager.acquire_lock(KEY, holder="this-run", acquire_timeout=30)
    proc.wait(timeout=10)
    assert f"waiting for train held by pid {proc.pid}" in caplog.text
    assert "breaking" not in caplog.text


def test_a_lock_older_than_the_bound_is_broken(tmp_path, caplog):
    old = {"holder": "x", "expiration": None, "host": "another-host", "pid": 1, "start": "1",
           "created": time.time() - locks.MAX_LOCK_AGE_S - 60}
    (tmp_path / f"{KEY}.lock").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="sft_pipeline.locks"):
        assert StageLockManager(tmp_path).acquire_lock(KEY, holder="this-run", acquire_timeout=5)
    assert "h old" in caplog.text


@pytest.mark.parametrize("info, stale", [
    ({"host": "another-host", "pid": 1, "created": None}, False),  # another machine's live run: wait
    ({"pid": os.getpid(), "start": locks.process_start(os.getpid())}, False),
    ({"pid": os.getpid(), "start": "not-its-start"}, True),  # the pid was reused by another process
])
def test_stale_reason(info, stale):
    import socket

    info = {"host": socket.gethostname(), "created": time.time(), **info}
    assert (locks.stale_reason(info, time.time()) is not None) is stale


def test_a_lock_file_taken_but_not_yet_written_reads_as_locked(tmp_path):
    # Prefect creates the lock file, then writes it: another thread reading in between found an empty file,
    # and Prefect's reader raised (CI, a two-branch sweep whose branches share a tokenize key).
    (tmp_path / f"{KEY}.lock").touch()
    manager = StageLockManager(tmp_path)
    assert manager.is_locked(KEY)
    assert not manager.acquire_lock(KEY, holder="this-run", acquire_timeout=0.3)


def test_a_lock_file_never_written_is_broken_after_a_minute(tmp_path, caplog):
    path = tmp_path / f"{KEY}.lock"
    path.touch()
    os.utime(path, (time.time() - locks.UNWRITTEN_LOCK_AGE_S - 5,) * 2)
    with caplog.at_level(logging.WARNING, logger="sft_pipeline.locks"):
        assert StageLockManager(tmp_path).acquire_lock(KEY, holder="this-run", acquire_timeout=5)
    assert "never written" in caplog.text


def test_threads_contending_for_one_key_take_it_in_turn(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    manager, inside, overlaps = StageLockManager(tmp_path), [], []

    def work(n: int) -> None:
        for _ in range(20):
            assert manager.acquire_lock(KEY, holder=f"h{n}", acquire_timeout=30)
            inside.append(n)
            overlaps.append(len(inside) > 1)
            time.sleep(0.001)
            inside.remove(n)
            manager.release_lock(KEY, holder=f"h{n}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    assert not any(overlaps) and len(overlaps) == 80
