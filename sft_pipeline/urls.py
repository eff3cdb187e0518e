"""Output places in the config: fsspec URLs (recognised, and checked that this machine can open them) and
local folders (checked that they can be folders)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

NAME_MAX_FALLBACK = 255  # bytes in one file name on common Linux file systems


def is_url(value: str) -> bool:
    """An fsspec URL such as ``s3://bucket/prefix`` (not a local path or a block slug).

    >>> is_url("s3://bucket/x"), is_url("memory://x"), is_url("runs"), is_url("remote-file-system/shared")
    (True, True, False, False)
    """
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", value))


def check_url(value: str) -> str:
    """``value`` if fsspec can open its protocol here, else a ValueError saying what is missing."""
    import fsspec

    protocol = value.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise ValueError(f"{value!r}: fsspec cannot open {protocol}:// ({str(exc).splitlines()[0]})") from None
    return value


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a folder to write into (a part of it is an existing file, a name is longer
    than the file system allows, or no folder can be made where it would be: a read-only file system,
    ``/proc``), or None.

    >>> folder_problem("runs") is None
    True
    >>> folder_problem("/tmp/" + "x" * 300 + "/out")
    'a name of 300 bytes in it is longer than the file system allows (255)'
    >>> folder_problem("/etc/passwd/out")
    '/etc/passwd is a file, not a folder'
    >>> folder_problem("/tmp/" + ("a" * 200 + "/") * 25)
    'File name too long'
    >>> folder_problem("/proc/runs")
    'cannot create a folder in /proc: No such file or directory'
    """
    path = Path(path).absolute()
    limit = _name_max(path)
    longest = max(len(os.fsencode(part)) for part in path.parts)
    if longest > limit:
        return f"a name of {longest} bytes in it is longer than the file system allows ({limit})"
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
    except OSError as err:  # a path over the system's length limit, a folder we may not look into
        return err.strerror or str(err)
    return _cannot_write_in(existing) if existing == path else _cannot_create_in(existing)


def _cannot_write_in(folder: Path) -> str | None:
    """Why nothing can be written in the existing ``folder`` (asked, not tried: others may be listing it)."""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only file system"
    return None if os.access(folder, os.W_OK) else f"{folder} is not writable"


def _cannot_create_in(folder: Path) -> str | None:
    """Why no folder can be made in ``folder``, found by making (and removing) one; None if it can."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as err:
        return f"cannot create a folder in {folder}: {err.strerror or err}"
    return None


def _name_max(path: Path) -> int:
    for parent in path.parents:  # the nearest that exists
        try:
            return os.pathconf(parent, "PC_NAME_MAX")
        except OSError:
            continue
    return NAME_MAX_FALLBACK
