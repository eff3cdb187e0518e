"""fsspec URLs in the config: recognise them, and check that this machine can open them."""

from __future__ import annotations

import re


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
