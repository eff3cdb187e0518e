"""User-facing errors: each carries one clear line, printed without a traceback."""

from __future__ import annotations

import errno
import os


class PipelineError(Exception):
    """Base class of errors reported to the user as a single line."""


class ConfigError(PipelineError):
    """The configuration is invalid (unknown key, bad value, bad override)."""


class InputError(PipelineError):
    """An input file cannot be read at all (missing, unreadable, wrong format)."""


class UnreadableSource(InputError):
    """The bytes of an existing local source file are not data we can read (binary, a ZIP, a broken
    Parquet footer, a cut compressed stream): ingest rejects the rest of that file and goes on."""


class VerificationError(PipelineError):
    """A stage's output failed a correctness gate (e.g. label masks)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none.

    >>> first_line(OSError("refused\\nretried 7 times")), first_line(TimeoutError())
    ('refused', 'TimeoutError')
    """
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DiskFull(PipelineError):
    """A write failed for lack of space or quota: a retry cannot fix it, freeing space can."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How a lost errno still reads: Python's strerror text, Rust's io::ErrorKind (safetensors) in messages.
DISK_FULL_TEXTS = (*(os.strerror(code) for code in sorted(DISK_FULL_ERRNOS)), "StorageFull", "QuotaExceeded")


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s cause chain that says the disk is full (ENOSPC, EDQUOT), or None.

    >>> disk_full_cause(OSError(errno.ENOSPC, "No space left on device")) is not None
    True
    >>> disk_full_cause(RuntimeError("IoError(Os { code: 28, kind: StorageFull })")) is not None
    True
    >>> disk_full_cause(OSError(errno.EIO, "Input/output error")) is None
    True
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in DISK_FULL_ERRNOS or any(text in str(exc) for text in DISK_FULL_TEXTS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# Errors that a retry cannot fix: tasks fail at once on these.
DETERMINISTIC_ERRORS = (PipelineError, ValueError, TypeError, KeyError, FileNotFoundError)
