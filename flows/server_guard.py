"""Stops Prefect's temporary server when the `sft-pipeline` process that started it dies, however it dies.

``python -m flows.server_guard`` reads process ids from its stdin, a pipe whose writing end only the
command holds (:func:`flows.cli.temporary_server` writes the server's pid as it is launched). The read
ends when the command exits, SIGKILL included; then each process named is stopped (SIGTERM, then SIGKILL
after ``STOP_WAIT_S``) if it is still the process it was (the same start time). A command that stopped its
server itself leaves nothing to stop. Only the standard library and :mod:`sft_pipeline.processes` are
imported: the guard stays small for as long as the command runs.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from sft_pipeline.processes import process_start

STOP_WAIT_S = 5.0
POLL_S = 0.1


def stop(pid: int, started: str | None) -> None:
    """SIGTERM, then SIGKILL, to ``pid`` while it is the process that started at ``started``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if started is None or process_start(pid) != started:
            return
        os.kill(pid, signum)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and process_start(pid) == started:
            time.sleep(POLL_S)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command, which stops its server itself
    watched = []
    for line in sys.stdin:  # until the command exits
        if line.strip().isdigit():
            pid = int(line)
            watched.append((pid, process_start(pid)))
    for pid, started in watched:
        try:
            stop(pid, started)
        except OSError:  # gone meanwhile
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
