"""``--random N --where STAGE=DECISION``: N rows of a run, drawn with a seed among those matching every filter.

Decisions, by stage (a row matches when the stage decided so):

* ``ingest``: ``accepted``, ``rejected``, or a reject reason (``no_assistant``, ...);
* ``score``: a signal that fired (``too_short``, ...), or ``clean`` (none fired);
* ``filter``: ``kept``, ``dropped``;
* ``tokenize``: ``train``, ``heldout``, ``dropped``, ``decontaminated``, ``shortened`` (train or held-out rows
  the truncation policy shortened; found by encoding candidates again, in the drawn order), or a drop reason;
* ``train``: ``used`` (in the train stage's training set), ``unused``.
"""

from __future__ import annotations

import itertools
import random
from typing import Callable, Iterable, Sequence

import pyarrow.compute as pc

from sft_pipeline import constants
from sft_pipeline.score.defaults import SCORE_SIGNALS
from sft_pipeline.errors import InputError
from sft_pipeline.inspection.run import RunFiles
from sft_pipeline.inspection.trace import Origin, trace_row
from sft_pipeline.ingest.reasons import REASONS
from sft_pipeline.tokenize.token_files import DROP_DECONTAMINATED, DROP_NOT_SELECTED, DROP_TEMPLATE_REFUSED
from sft_pipeline.tokenize.truncation import DROP_COUNTS

SHORTENED = "shortened"
FIXED = {constants.STAGE_INGEST: ("accepted", "rejected"), constants.STAGE_SCORE: ("clean",),
         constants.STAGE_FILTER: ("kept", "dropped"),
         constants.STAGE_TOKENIZE: ("train", "heldout", "dropped", "decontaminated", SHORTENED),
         constants.STAGE_TRAIN: ("used", "unused")}
REASON_DECISIONS = {constants.STAGE_INGEST: REASONS,
                    constants.STAGE_TOKENIZE: (DROP_NOT_SELECTED, DROP_TEMPLATE_REFUSED, *DROP_COUNTS.values())}


def parse_where(text: str) -> tuple[str, str]:
    """
    >>> parse_where("filter=dropped")
    ('filter', 'dropped')
    """
    stage, sep, decision = text.partition("=")
    if not sep or stage not in FIXED or not decision:
        raise InputError(f"--where {text!r}: expected STAGE=DECISION with STAGE one of {', '.join(FIXED)}")
    if stage != constants.STAGE_SCORE and decision not in (*FIXED[stage], *REASON_DECISIONS.get(stage, ())):
        _unknown(stage, decision, REASON_DECISIONS.get(stage, ()))
    return stage, decision


def _ids(files: RunFiles, stage: str, name: str, column: str = "id") -> set[str]:
    values = files.columns(stage, name, (column,)).column(column)
    return set((pc.list_flatten(values) if column == "ids" else values).to_pylist())


def _train_ids(files: RunFiles) -> set[str]:
    column = "ids" if "ids" in files.column_names(constants.STAGE_TOKENIZE, constants.TRAIN_TOKENS_FILE) else "id"
    return _ids(files, constants.STAGE_TOKENIZE, constants.TRAIN_TOKENS_FILE, column)


def _rejects(files: RunFiles, reason: str | None = None) -> set[str]:
    rows = files.columns(constants.STAGE_INGEST, constants.REJECTS_FILE, ("source", "source_row", "reason")).to_pylist()
    return {Origin(r["source"], r["source_row"]).ref() for r in rows if reason in (None, r["reason"])}


def _tokenize_drops(files: RunFiles, wanted: Callable[[str], bool]) -> set[str]:
    rows = files.columns(constants.STAGE_TOKENIZE, constants.TOKENIZE_DROPPED_FILE, ("id", "reason")).to_pylist()
    return {r["id"] for r in rows if wanted(r["reason"])}


def matching(files: RunFiles, stage: str, decision: str, everyone: set[str]) -> set[str]:
    """The rows (ids, or ``SOURCE:RECORD`` for rejects) that ``stage`` decided ``decision`` for."""
    if not files.has(stage):
        raise InputError(f"--where {stage}={decision}: this run has no {stage} output")
    if stage == constants.STAGE_INGEST:
        accepted = _ids(files, stage, constants.CONVERSATIONS_FILE)
        return accepted if decision == "accepted" else _rejects(files, None if decision == "rejected" else decision)
    if stage == constants.STAGE_SCORE:
        return _fired(files, decision)
    if stage == constants.STAGE_FILTER:
        return _ids(files, stage, constants.FILTERED_FILE if decision == "kept" else constants.DROPPED_FILE)
    if stage == constants.STAGE_TRAIN:
        used = _train_ids(files) if files.has(constants.STAGE_TOKENIZE) else set()
        return used if decision == "used" else everyone - used
    if decision in ("train", SHORTENED):
        held_out = _ids(files, stage, constants.HELDOUT_TOKENS_FILE) if decision == SHORTENED else set()
        return _train_ids(files) | held_out
    if decision == "heldout":
        return _ids(files, stage, constants.HELDOUT_TOKENS_FILE)
    if decision == "decontaminated":
        return _tokenize_drops(files, lambda reason: reason == DROP_DECONTAMINATED)
    return _tokenize_drops(files, lambda reason: decision == "dropped" or reason.split(":")[0] == decision)


def _fired(files: RunFiles, decision: str) -> set[str]:
    names = files.column_names(constants.STAGE_SCORE, constants.SCORES_FILE)
    signals = tuple(s for s in SCORE_SIGNALS if s in names)
    if decision != "clean" and decision not in signals:
        _unknown(constants.STAGE_SCORE, decision, signals)
    rows = files.columns(constants.STAGE_SCORE, constants.SCORES_FILE, ("id", *signals)).to_pylist()
    if decision == "clean":
        return {r["id"] for r in rows if not any(r[s] for s in signals)}
    return {r["id"] for r in rows if r[decision]}


def _unknown(stage: str, decision: str, more: Iterable[str] = ()) -> set[str]:
    known = ", ".join([*FIXED[stage], *more])
    raise InputError(f"--where {stage}={decision}: unknown decision (known: {known})")


def population(files: RunFiles) -> list[str]:
    """Every row the run read: accepted ids (once each, in file order), then the rejects as SOURCE:RECORD."""
    ids = files.columns(constants.STAGE_INGEST, constants.CONVERSATIONS_FILE, ("id",)).column("id").to_pylist()
    return list(dict.fromkeys(ids)) + sorted(_rejects(files))


def pick(files: RunFiles, count: int, where: Sequence[str], seed: int = 0) -> list[str]:
    """``count`` rows matching every ``where`` filter, drawn reproducibly with ``seed`` (fewer if fewer match)."""
    rows = population(files)
    everyone = set(rows)
    filters = [parse_where(w) for w in where]
    for stage, decision in filters:
        chosen = matching(files, stage, decision, everyone)
        rows = [r for r in rows if r in chosen]
    random.Random(seed).shuffle(rows)
    if (constants.STAGE_TOKENIZE, SHORTENED) not in filters:
        return rows[:count]
    return list(itertools.islice(_shortened(files, rows), count))


def _shortened(files: RunFiles, rows: Sequence[str]):
    for row in rows:
        enc = trace_row(files, row).tokenized.encoded
        if getattr(enc, "truncated", False):
            yield row
