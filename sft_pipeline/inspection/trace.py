"""One row traced through a run's stage outputs, as they are on disk: :func:`trace_row` -> :class:`RowTrace`.

A row is named by its id (the ingest stage's content hash, or a prefix of it that only it has) or by its place
in a source, ``SOURCE:RECORD`` (RECORD: the 0-based record index that ingest stores as ``source_row``, which
for JSON lines is the line number minus one; SOURCE: the configured path or its end, e.g. the file's name).
Only the second form names a row that ingest rejected (a reject has no id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from sft_pipeline import constants
from sft_pipeline.score.defaults import DEFAULT_SCORE_WEIGHTS, SCORE_SIGNALS
from sft_pipeline.errors import InputError
from sft_pipeline.inspection.run import POSITION_COLUMNS, RunFiles

MIN_PREFIX = 6  # characters of an id prefix
POSITION_RE = re.compile(r"^(?P<source>.+):(?P<record>\d+)$")
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".jsonl.bz2", ".jsonl.xz")


@dataclass(frozen=True)
class Origin:
    """Where a row was read: the source as configured, the record index, and the line where that is one."""

    source: str
    record: int

    @property
    def line(self) -> int | None:
        """The 1-based line of a JSON lines record (blank lines count), None for other kinds of source.

        >>> Origin("a.jsonl", 4).line, Origin("b.parquet", 4).line
        (5, None)
        """
        return self.record + 1 if self.source.lower().endswith(JSON_LINES_SUFFIXES) else None

    def ref(self) -> str:
        return f"{self.source}:{self.record}"


@dataclass(frozen=True)
class Reject:
    """Why ingest rejected the row (a code of ``ingest/reasons.py`` and one line) and the record as read."""

    reason: str
    message: str
    raw: str


@dataclass(frozen=True)
class Scored:
    """One copy's score and the signals that fired, each with its weight."""

    score: float
    fired: list[tuple[str, float]]
    duplicate_of: str | None
    tokens_est: int | None


@dataclass(frozen=True)
class Filtered:
    kept: bool
    dropped_by: str | None
    score: float | None


@dataclass
class Tokenized:
    """Where tokenize put the row, the tokens stored for it, and its re-encoding (what the policy kept)."""

    split: str | None = None  # train / heldout (None: not in the token files)
    dropped: tuple[str, str] | None = None  # (split, reason) from tokenize_dropped.parquet
    train_row: int | None = None  # row of train.parquet
    packed: tuple[int, int] | None = None  # (packed row, sequence in it) when train.parquet is packed
    input_ids: list[int] | None = None
    labels: list[int] | None = None
    encoded: Any = None  # the stage's encoding again (Encoded / RowProblem), None without a tokenizer
    whole: Any = None  # a dropped row encoded whole, to show it
    config: dict = field(default_factory=dict)  # the tokenize stage's config, from its manifest


@dataclass
class RowTrace:
    """Everything the stage outputs of one run say about one row."""

    query: str
    dirs: dict[str, Path]
    row_id: str | None = None
    origins: list[Origin] = field(default_factory=list)
    format: str | None = None
    messages: list[dict] | None = None
    reject: Reject | None = None
    scores: list[Scored] | None = None  # None: no score output in this run
    weights_cutoff: tuple[str | None, float | None] = (None, None)  # the filter's method and cutoff
    filtered: list[Filtered] | None = None
    tokenized: Tokenized | None = None
    train: dict | None = None  # the train stage's steps and rows when train.parquet holds the row
    notes: list[str] = field(default_factory=list)


def trace_row(files: RunFiles, query: str) -> RowTrace:
    """Trace ``query`` (an id, an id prefix or ``SOURCE:RECORD``) through ``files``; InputError if unknown."""
    if not files.has(constants.STAGE_INGEST):
        raise InputError("this run has no ingest output: nothing to trace")
    trace = RowTrace(query=query, dirs=dict(files.dirs))
    position = POSITION_RE.match(query)
    if position:
        _from_position(files, trace, position["source"], int(position["record"]))
    else:
        trace.row_id = resolve_id(files, query)
    if trace.row_id is None:
        return trace
    _ingest(files, trace)
    _score(files, trace)
    _filter(files, trace)
    _tokenize(files, trace)
    _train(files, trace)
    return trace


def resolve_id(files: RunFiles, query: str) -> str:
    """The one accepted row id that is ``query`` or starts with it."""
    ids = files.columns(constants.STAGE_INGEST, constants.CONVERSATIONS_FILE, ("id",)).column("id")
    if len(query) < MIN_PREFIX:
        raise InputError(f"row {query!r}: give at least {MIN_PREFIX} characters of an id, or SOURCE:RECORD")
    found = sorted(set(ids.filter(pc.starts_with(ids, query)).to_pylist()))
    if not found:
        conversations = files.path(constants.STAGE_INGEST, constants.CONVERSATIONS_FILE)
        raise InputError(f"row {query!r}: no such id in {conversations} "
                         f"(a rejected row has no id: name it as SOURCE:RECORD)")
    if len(found) > 1:
        raise InputError(f"row {query!r}: {len(found)} ids start with it ({', '.join(found[:3])}...): give more")
    return found[0]


def _source_matches(stored: str, given: str) -> bool:
    """
    >>> _source_matches("tests/data/a.jsonl", "a.jsonl"), _source_matches("tests/data/ba.jsonl", "a.jsonl")
    (True, False)
    """
    return stored == given or stored.endswith("/" + given) or Path(stored) == Path(given)


def _from_position(files: RunFiles, trace: RowTrace, source: str, record: int) -> None:
    convs = files.columns(constants.STAGE_INGEST, constants.CONVERSATIONS_FILE, POSITION_COLUMNS).to_pylist()
    rejects = files.columns(constants.STAGE_INGEST, constants.REJECTS_FILE,
                            ("source", "source_row", "reason", "message", "raw"))
    rejects = rejects.to_pylist()
    sources = {r["source"] for r in convs + rejects if _source_matches(r["source"], source)}
    if not sources:
        raise InputError(f"row {trace.query!r}: no source {source!r} in this run's ingest output")
    if len(sources) > 1:
        raise InputError(f"row {trace.query!r}: {source!r} names {len(sources)} sources ({', '.join(sorted(sources))})")
    (name,) = sources
    for row in convs:
        if row["source"] == name and row["source_row"] == record:
            trace.row_id = row["id"]
            return
    for row in rejects:
        if row["source"] == name and row["source_row"] == record:
            trace.origins = [Origin(name, record)]
            trace.reject = Reject(row["reason"], row["message"], row["raw"])
            return
    raise InputError(f"row {trace.query!r}: {name} has no record {record} in this run's ingest output")


def _ingest(files: RunFiles, trace: RowTrace) -> None:
    rows = files.rows(constants.STAGE_INGEST, constants.CONVERSATIONS_FILE, "id", trace.row_id)
    trace.origins = [Origin(r["source"], r["source_row"]) for r in rows]
    trace.format, trace.messages = rows[0]["format"], rows[0]["messages"]


def _score(files: RunFiles, trace: RowTrace) -> None:
    if not files.has(constants.STAGE_SCORE):
        return
    config = files.manifest(constants.STAGE_SCORE).get("config", {}).get(constants.STAGE_SCORE, {})
    weights = {**DEFAULT_SCORE_WEIGHTS, **config.get("weights", {})}
    trace.scores = [Scored(score=row[constants.SCORE_COLUMN],
                           fired=[(s, weights.get(s, 0.0)) for s in SCORE_SIGNALS if row.get(s)],
                           duplicate_of=row.get(constants.DUPLICATE_OF_COLUMN),
                           tokens_est=row.get(constants.TOKENS_EST_COLUMN))
                    for row in files.rows(constants.STAGE_SCORE, constants.SCORES_FILE, "id", trace.row_id)]


def _filter(files: RunFiles, trace: RowTrace) -> None:
    if not files.has(constants.STAGE_FILTER):
        return
    manifest = files.manifest(constants.STAGE_FILTER)
    trace.weights_cutoff = ((manifest.get("details") or {}).get("method"), (manifest.get("counts") or {}).get("cutoff"))
    kept = files.rows(constants.STAGE_FILTER, constants.FILTERED_FILE, "id", trace.row_id)
    dropped = files.rows(constants.STAGE_FILTER, constants.DROPPED_FILE, "id", trace.row_id)
    trace.filtered = [Filtered(True, None, r.get(constants.SCORE_COLUMN)) for r in kept] + \
        [Filtered(False, r[constants.DROPPED_BY_COLUMN], r.get(constants.SCORE_COLUMN)) for r in dropped]


def _tokenize(files: RunFiles, trace: RowTrace) -> None:
    if not files.has(constants.STAGE_TOKENIZE):
        return
    tok = trace.tokenized = Tokenized()
    tok.config = files.manifest(constants.STAGE_TOKENIZE).get("config", {}).get(constants.STAGE_TOKENIZE, {})
    dropped = files.rows(constants.STAGE_TOKENIZE, constants.TOKENIZE_DROPPED_FILE, "id", trace.row_id)
    if dropped:
        tok.dropped = (dropped[0]["split"], dropped[0]["reason"])
    held = files.rows(constants.STAGE_TOKENIZE, constants.HELDOUT_TOKENS_FILE, "id", trace.row_id)
    if held:
        tok.split, tok.input_ids, tok.labels = "heldout", held[0]["input_ids"], held[0]["labels"]
    else:
        _train_tokens(files, tok, trace.row_id)
    if trace.messages is not None and (tok.split or tok.dropped):
        tok.encoded = _encoded(files, trace, whole=False)
        if tok.split is None:
            tok.whole = _encoded(files, trace, whole=True)


def _train_tokens(files: RunFiles, tok: Tokenized, row_id: str) -> None:
    """The row's tokens in train.parquet (one sequence of a packed row when it is packed)."""
    name = constants.TRAIN_TOKENS_FILE
    if "ids" in files.column_names(constants.STAGE_TOKENIZE, name):
        tok.packed = files.packed_position(row_id)
        if tok.packed is None:
            return
        row, seq = tok.packed
        table = files.columns(constants.STAGE_TOKENIZE, name, ("input_ids", "labels", "seq_lengths"))
        lengths = table.column("seq_lengths")[row].as_py()
        start = sum(lengths[:seq])
        tok.input_ids, tok.labels = (table.column(c)[row].as_py()[start: start + lengths[seq]]
                                     for c in ("input_ids", "labels"))
    else:
        found = files.positions(constants.STAGE_TOKENIZE, name, row_id)
        if not found:
            return
        tok.train_row = found[0]
        table = files.columns(constants.STAGE_TOKENIZE, name, ("input_ids", "labels"))
        tok.input_ids, tok.labels = (table.column(c)[found[0]].as_py() for c in ("input_ids", "labels"))
    tok.split = "train"


def _encoded(files: RunFiles, trace: RowTrace, whole: bool):
    """The row encoded as the stage encodes it (``whole``: not shortened), None without a tokenizer."""
    encoder = files.encoder()
    note = f"the tokenize stage's tokenizer cannot be loaded here ({files.encoder_problem})"
    if encoder is None and files.encoder_problem and note not in trace.notes:
        trace.notes.append(note)
    return None if encoder is None else encoder.encode(trace.messages, whole=whole)


def _train(files: RunFiles, trace: RowTrace) -> None:
    tok = trace.tokenized
    if tok is None or tok.split != "train" or not files.has(constants.STAGE_TRAIN):
        return
    import json

    try:
        metrics = json.loads(files.path(constants.STAGE_TRAIN, constants.METRICS_FILE).read_text())
    except (OSError, ValueError):
        metrics = {}
    rows = (metrics.get("data") or {}).get("rows")
    steps, batch = metrics.get("steps"), metrics.get("effective_batch")
    seen = steps * batch if isinstance(steps, int) and isinstance(batch, int) else None
    trace.train = {"steps": steps, "effective_batch": batch, "rows": rows, "rows_drawn": seen,
                   "epochs": round(seen / rows, 2) if seen is not None and rows else None}
