"""Who is writing something, recorded beside it (host, pid, process start time), and whether that writer is
gone: what a killed writer left behind (a lock, a half-built folder) can then be removed, and nothing a live
one is still writing."""

from __future__ import annotations

import os
import socket
import time

from sft_pipeline.processes import process_start

MAX_AGE_S = 7 * 24 * 3600  # nothing is written for a week: what is older is a leftover, whoever wrote it


def this_process() -> dict:
    """The record of this process as a writer."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
            "created": time.time()}


def gone(info: dict, written: float, max_age_s: float = MAX_AGE_S) -> str | None:
    """Why the writer recorded in ``info`` is gone (None: alive, or on another host and not too old);
    ``written``: when the record was written (its file's mtime), for records without ``created``.

    >>> gone(this_process(), time.time()) is None
    True
    >>> gone({"host": socket.gethostname(), "pid": 2**22 + 1}, time.time())
    'its holder, pid 4194305, is gone'
    """
    age = time.time() - float(info.get("created") or written)
    if age > max_age_s:
        return f"it is {age / 3600:.0f} h old"
    if info.get("host") == socket.gethostname() and info.get("pid") is not None:
        start = process_start(int(info["pid"]))
        if start is None or start != info.get("start"):
            return f"its holder, pid {info['pid']}, is gone"
    return None
