"""The ingest stage: every configured source -> ``conversations.parquet`` + ``rejects.parquet``.

Rows stream through reader -> format conversion -> validation -> a batched Parquet
writer, so memory stays bounded by ``batch_rows``. Every row read is either accepted or
rejected with a reason; the returned summary proves it per source and in total.

Where rows can be counted, damage is per row: a bad row, a row too large, an undecodable
Parquet row group (its rows) are rejects. Where they cannot (an empty, binary or ZIP file, a
Parquet footer that does not parse, a compressed stream cut short), the rest of that file is one
``unreadable_source`` reject, logged as one line naming the file, and the other sources still
count. Anything else (a missing file, a wrong split or datasets folder, a source from the hub, an
I/O error, which a retry may fix) or a corpus where no source could be read stops the stage with
one InputError line and writes nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_pipeline.config import IngestConfig, SourceConfig
from sft_pipeline.constants import CONVERSATIONS_FILE, REJECTS_FILE
from sft_pipeline.errors import InputError, UnreadableSource, VerificationError
from sft_pipeline.escape import terminal
from sft_pipeline.ingest.formats import (DROPPED_LEADING_ASSISTANT_KEY, Message, MessageKeys, apply_field_map,
                                         conversation_id, drop_leading_assistant, metadata_json, to_messages)
from sft_pipeline.ingest.readers import HUB_SCHEME, read_source
from sft_pipeline.ingest.reasons import UNREADABLE_SOURCE, RawRow, RowReject
from sft_pipeline.ingest.validate import validate_messages
from sft_pipeline.ingest.writer import CONVERSATIONS_SCHEMA, REJECTS_SCHEMA, BatchWriter, excerpt
from sft_pipeline.resources import resolve_path

PARTIAL_SUFFIX = ".partial"
log = logging.getLogger(__name__)


@dataclass
class SourceStats:
    source: str
    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    formats: Counter = field(default_factory=Counter)  # accepted rows by format
    rejects_by_reason: Counter = field(default_factory=Counter)
    unreadable: str | None = None  # why the rest of the file could not be read

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows_read": self.rows_read, "rows_accepted": self.rows_accepted,
                "rows_rejected": self.rows_rejected, "formats": dict(sorted(self.formats.items())),
                "rejects_by_reason": dict(self.rejects_by_reason.most_common()),
                **({"unreadable": self.unreadable} if self.unreadable else {})}


def convert_row(row: RawRow, src: SourceConfig, keys: MessageKeys, cfg: IngestConfig
                ) -> tuple[str, list[Message], dict]:
    """A raw row -> (format, validated messages, metadata); raises RowReject."""
    if row.reject is not None:
        raise row.reject
    record = apply_field_map(row.record, src.field_map) if isinstance(row.record, dict) else row.record
    fmt, messages, metadata = to_messages(record, src.format, keys)
    if cfg.drop_leading_assistant:
        messages, dropped = drop_leading_assistant(messages)
        if dropped is not None:
            metadata[DROPPED_LEADING_ASSISTANT_KEY] = dropped
    validate_messages(messages, max_chars=cfg.max_chars, max_turns=cfg.max_turns)
    return fmt, messages, metadata


def raw_text(row: RawRow) -> str:
    """What a reject shows of its row: the original text, or the parsed record as JSON.

    >>> raw_text(RawRow(3, record={"a": 1}))
    '{"a": 1}'
    """
    raw = row.raw if row.raw is not None else json.dumps(row.record, default=str, ensure_ascii=False)
    return excerpt(raw)


def ingest_source(src: SourceConfig, cfg: IngestConfig, convs: BatchWriter, rejects: BatchWriter,
                  index: int = 0) -> SourceStats:
    """Stream one source (``ingest.sources[index]``) into the two writers; the rest of a local file that cannot be
    read is one reject."""
    path = None if src.path.startswith(HUB_SCHEME) else resolve_path(src.path)
    stats = SourceStats(src.path)
    try:
        _stream(src, index, path, cfg, convs, rejects, stats)
    except UnreadableSource as err:  # damaged bytes only: a missing file, a wrong split or an I/O error still stop
        stats.unreadable = str(err)
        _reject(rejects, stats, src.path, RawRow(stats.rows_read, raw=""), RowReject(UNREADABLE_SOURCE, str(err)))
    return stats


def _stream(src: SourceConfig, index: int, path: Path | None, cfg: IngestConfig, convs: BatchWriter,
            rejects: BatchWriter, stats: SourceStats) -> None:
    rows = read_source(src.path, path, split=src.split, max_row_bytes=cfg.max_row_bytes, batch_rows=cfg.batch_rows)
    keys = MessageKeys(src.field_map)
    with closing(rows):  # at `limit`, close the reader now (its file, a pipe's temporary copy)
        for row in itertools.islice(rows, src.limit):
            try:
                fmt, messages, metadata = convert_row(row, src, keys, cfg)
            except RowReject as rej:
                _reject(rejects, stats, src.path, row, rej)
                continue
            convs.append(id=conversation_id(messages), source=src.path, source_index=index, source_row=row.index,
                         format=fmt, messages=messages, metadata=metadata_json(metadata))
            stats.rows_read += 1
            stats.rows_accepted += 1
            stats.formats[fmt] += 1


def _reject(rejects: BatchWriter, stats: SourceStats, source: str, row: RawRow, rej: RowReject) -> None:
    rejects.append(source=source, source_row=row.index, reason=rej.reason, message=rej.message, raw=raw_text(row))
    stats.rows_read += 1
    stats.rows_rejected += 1
    stats.rejects_by_reason[rej.reason] += 1


def build_summary(stats: list[SourceStats], seconds: float) -> dict[str, Any]:
    """Totals over sources; raises VerificationError if any row is unaccounted for."""
    formats, reasons = Counter(), Counter()
    for s in stats:
        formats.update(s.formats)
        reasons.update(s.rejects_by_reason)
        if s.rows_read != s.rows_accepted + s.rows_rejected:
            raise VerificationError(f"{s.source}: {s.rows_read} rows read != accepted + rejected")
    total = {k: sum(getattr(s, k) for s in stats) for k in ("rows_read", "rows_accepted", "rows_rejected")}
    return {**total, "formats": dict(sorted(formats.items())), "rejects_by_reason": dict(reasons.most_common()),
            "sources": [s.as_dict() for s in stats], "seconds": round(seconds, 3)}


def ingest_sources(cfg: IngestConfig, out_dir: Path) -> dict[str, Any]:
    """Write ``CONVERSATIONS_FILE`` and ``REJECTS_FILE`` into ``out_dir``; return the summary.

    Both files appear only when every source was read (a source that cannot be read at
    all raises InputError and leaves no partial output).
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    finals = [out_dir / CONVERSATIONS_FILE, out_dir / REJECTS_FILE]
    partials = [p.with_name(p.name + PARTIAL_SUFFIX) for p in finals]
    try:
        with BatchWriter(partials[0], CONVERSATIONS_SCHEMA, cfg.batch_rows) as convs, \
                BatchWriter(partials[1], REJECTS_SCHEMA, cfg.batch_rows) as rejects:
            stats = [ingest_source(src, cfg, convs, rejects, i) for i, src in enumerate(cfg.sources)]
            if stats and all(s.unreadable for s in stats):
                raise InputError(stats[0].unreadable if len(stats) == 1 else
                                 f"no source could be read ({stats[0].unreadable})")
            for s in stats:
                if s.unreadable:
                    log.warning("%s (the rest of the file is one %s reject)", s.unreadable, UNREADABLE_SOURCE)
        summary = build_summary(stats, time.perf_counter() - started)
        for partial, final in zip(partials, finals):
            os.replace(partial, final)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short multi-line, human-readable view of :func:`ingest_sources`' summary.

    >>> print(format_summary({"rows_read": 3, "rows_accepted": 2, "rows_rejected": 1, "seconds": 0.5,
    ...     "formats": {"alpaca": 2}, "rejects_by_reason": {"no_assistant": 1},
    ...     "sources": [{"source": "a.jsonl", "rows_read": 3, "rows_accepted": 2, "rows_rejected": 1,
    ...                  "formats": {"alpaca": 2}, "rejects_by_reason": {"no_assistant": 1}}]}))
    ingest: 3 rows read, 2 accepted, 1 rejected from 1 source(s) in 0.5 s
      a.jsonl: 3 read, 2 accepted (alpaca 2), 1 rejected (no_assistant 1)
    rejects by reason: no_assistant 1
    """
    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items())

    lines = [f"ingest: {summary['rows_read']} rows read, {summary['rows_accepted']} accepted, "
             f"{summary['rows_rejected']} rejected from {len(summary['sources'])} source(s) "
             f"in {summary['seconds']} s"]
    for s in summary["sources"]:
        line = f"  {terminal(s['source'], one_line=True)}: {s['rows_read']} read, {s['rows_accepted']} accepted"
        line += f" ({counts(s['formats'])})" if s["formats"] else ""
        line += f", {s['rows_rejected']} rejected"
        line += f" ({counts(s['rejects_by_reason'])})" if s["rows_rejected"] else ""
        lines.append(line)
    if summary["rejects_by_reason"]:
        lines.append(f"rejects by reason: {counts(summary['rejects_by_reason'])}")
    return "\n".join(lines)
