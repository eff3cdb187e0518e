"""Prefect's temporary server, tied to the life of the `sft-pipeline` command that starts it.

Prefect starts its temporary server (a uvicorn subprocess) on first use and stops it at exit; a command
killed with SIGKILL left it running for ever, one more per crash. :func:`temporary_server` starts it up
front instead (the flow then reuses it: it is Prefect's own singleton) beside a guard process
(:mod:`flows.server_guard`) that stops it once the command is gone. :func:`lost` tells the command that
the server died under it, so that it reads the run's outcome from the outputs on disk instead of waiting
for ever on a Prefect that cannot answer.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

GUARD_MODULE = "flows.server_guard"
# What keeps printing once the server is gone: the events client and worker, every 7 s.
NOISY_WITHOUT_SERVER = ("prefect.events.clients", "prefect._internal.concurrency")
LOST = threading.Event()  # set once the temporary server has died under this process: skip what needs its API


def start_guard() -> subprocess.Popen:
    """The guard, reading pids from a pipe that only this process writes to."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", GUARD_MODULE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True, text=True)


def temporary_server() -> Any:
    """Start Prefect's temporary server now, each launch of it reported to a guard; return it."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.running:
        return server
    guard = start_guard()
    launch = server._run_uvicorn_command  # also called again when the chosen port was taken

    def guarded_launch() -> subprocess.Popen:
        process = launch()
        guard.stdin.write(f"{process.pid}\n")
        guard.stdin.flush()
        return process

    server._run_uvicorn_command = guarded_launch
    server.guard = guard  # its pipe stays open, held by this process alone, until the command exits
    server.start()
    return server


def lost(server: Any) -> int | None:
    """The exit status of the temporary server if it has died (None: running, or stopped by us)."""
    process = getattr(server, "server_process", None)
    return None if process is None else process.poll()


def without_server() -> None:
    """From now on nothing waits for the API (an artifact retried for a minute), and Prefect's background
    services print no more retry and connection lines: nobody can answer them."""
    LOST.set()
    for name in NOISY_WITHOUT_SERVER:
        logging.getLogger(name).disabled = True  # Prefect's internal logger ignores levels
