"""``sft-pipeline ingest --out DIR``: build the output in a temporary folder beside ``DIR``, then
rename it into place, so that readers and concurrent writers only ever see a whole output.

Two writers of one ``DIR`` each build their own folder; the swaps into place are serialised by
an advisory lock on the parent folder (``flock``), and the last one wins. ``DIR`` may be new,
empty, or an earlier ingest output; anything else there is refused rather than replaced.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sft_pipeline.config import IngestConfig
from sft_pipeline.constants import CONVERSATIONS_FILE, REJECTS_FILE
from sft_pipeline.errors import InputError
from sft_pipeline.ingest.sources import ingest_sources
from sft_pipeline.urls import folder_problem

OUTPUT_FILES = frozenset({CONVERSATIONS_FILE, REJECTS_FILE})
TMP_INFIX, OLD_INFIX = ".tmp-", ".old-"


def check_out_dir(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder holding anything but an ingest output."""
    if why := folder_problem(out):  # a name too long for the file system, or a file on the way
        raise InputError(f"{out}: cannot write --out there: {why}")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
        if others:
            raise InputError(f"{out}: --out holds other files ({', '.join(others[:3])}); name a new or empty "
                             f"folder, or an earlier ingest output")


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` for the duration of the block."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def publish(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an earlier output there."""
    with folder_lock(out.parent):
        check_out_dir(out)
        if not out.exists():
            os.replace(tmp, out)
            return
        old = out.with_name(f".{out.name}{OLD_INFIX}{uuid.uuid4().hex[:8]}")
        with signals_held():  # a stop between the two renames would leave no output at `out`
            os.replace(out, old)
            os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait (in this thread) until the block is done."""
    held = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def ingest_into(cfg: IngestConfig, out: Path) -> dict[str, Any]:
    """Run the ingest into ``out`` atomically; return its summary."""
    out = Path(out).absolute()
    check_out_dir(out)
    tmp = out.with_name(f".{out.name}{TMP_INFIX}{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create the output folder: {err.strerror or err}") from None
    try:
        summary = ingest_sources(cfg, tmp)
        publish(tmp, out)
    except OSError as err:  # sources' read errors are InputErrors already: this is the output side
        raise InputError(f"{out}: cannot write the output: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
