"""Human-readable numbers for the report: thousands separators, GiB, signed deltas, intervals."""

from __future__ import annotations

from typing import Any

MISSING = "–"
BYTE_UNITS = (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10))
BYTES_SUFFIX = "_bytes"
FLOPS_SUFFIX = "_flops"


def fmt(value: Any, signed: bool = False) -> str:
    """Compact number formatting for tables (thousands separated).

    >>> fmt(0.12345), fmt(3), fmt(None), fmt(-0.5, signed=True), fmt(0.25, signed=True)
    ('0.123', '3', '–', '-0.500', '+0.250')
    >>> fmt(17792), fmt(12345.678), fmt(-3, signed=True)
    ('17,792', '12,345.7', '-3')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    sign = "+" if signed else ""
    if isinstance(value, int):
        return f"{value:{sign},d}"
    return f"{value:{sign},.1f}" if abs(value) >= 1000 else f"{value:{sign}.3f}"


def size(n: float) -> str:
    """Bytes in binary units.

    >>> size(3_500_000_000), size(5 * 2 ** 20), size(512)
    ('3.26 GiB', '5.00 MiB', '512 B')
    """
    for unit, scale in BYTE_UNITS:
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{int(n)} B"


def quantity(key: str, value: Any) -> str:
    """A value formatted by what its key says it is (bytes, FLOP/s, or a plain number).

    >>> quantity("peak_memory_bytes", 3_758_096_384), quantity("peak_flops", 9.89e14), quantity("rows", 1276)
    ('3.50 GiB', '989.0 TFLOP/s', '1,276')
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key.endswith(BYTES_SUFFIX):
            return size(value)
        if key.endswith(FLOPS_SUFFIX):
            return f"{value / 1e12:,.1f} TFLOP/s"
    return fmt(value)


def interval(low: float | None, high: float | None) -> str:
    """A 95 % interval as ``[low, high]`` (signed: it is an interval of a delta).

    >>> interval(-0.061, 0.0172), interval(None, None)
    ('[-0.061, +0.017]', '–')
    """
    if low is None or high is None:
        return MISSING
    return f"[{fmt(low, True)}, {fmt(high, True)}]"


SECONDS_SUFFIX = "_s"


def label(key: str) -> str:
    """A count's key as a label (the unit suffix dropped or put in parentheses).

    >>> label("heldout_rows"), label("by_reason.too_long"), label("peak_memory_bytes"), label("duration_s")
    ('heldout rows', 'by reason · too long', 'peak memory', 'duration (s)')
    """
    unit = ""
    if key.endswith(BYTES_SUFFIX):
        key = key[: -len(BYTES_SUFFIX)]
    elif key.endswith(SECONDS_SUFFIX):
        key, unit = key[: -len(SECONDS_SUFFIX)], " (s)"
    return key.replace("_", " ").replace(".", " · ") + unit
