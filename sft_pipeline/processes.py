"""Which process a pid is: its start time, so that a pid reused by another process is not mistaken for it."""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), None if it does not exist.

    >>> process_start(os.getpid()) is not None, process_start(2**22 + 1)
    (True, None)
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]
