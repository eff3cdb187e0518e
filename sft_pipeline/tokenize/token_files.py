"""Split, encode, verify, (pack) and write the tokenize stage's token files.

Every input row ends up in exactly one place: ``train.parquet``, ``heldout.parquet``
or ``tokenize_dropped.parquet`` (with its reason: a row the chat template refuses is dropped
with the template's message). What is kept of a long row, and which rows are dropped for
their length, is the truncation policy's (``truncation.py``). Nothing is written unless
every kept row passes the label-mask gate.
"""

from __future__ import annotations

from pathlib import Path
import logging
from typing import Collection, Sequence

import numpy as np
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.config import TokenizeConfig
from sft_pipeline.errors import ConfigError, InputError, VerificationError
from sft_pipeline.tokenize.encode import EncodeSettings, RowProblem, encode_all
from sft_pipeline.tokenize.mixing import Mix, mix_summary
from sft_pipeline.tokenize.outputs import (SPLIT_HELDOUT, SPLIT_TRAIN, Drop, Part, Rows, Tokenizing, drops_of,
                                           eot_stats, length_stats, write_outputs)
from sft_pipeline.tokenize.split import Split, decontaminate, split_by_id
from sft_pipeline.tokenize.template import learn_template
from sft_pipeline.tokenize.truncation import drop_counts, truncation_stats
from sft_pipeline.tokenize.verify import check_rows, listed, target_turns

DROP_DECONTAMINATED = "heldout_ngram_overlap_with_train"
DROP_NOT_SELECTED = "not_in_max_rows_subset"
DROP_NOT_MIXED = "beyond_its_source_share"  # a train candidate of a source whose share was filled
DROP_TEMPLATE_REFUSED = "chat_template_refused"  # followed by the template's message
REQUIRED_COLUMNS = ("id", "messages")
log = logging.getLogger(__name__)


def _problem(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages is empty"
    for k, msg in enumerate(messages):
        role, content = (msg.get("role"), msg.get("content")) if isinstance(msg, dict) else (None, None)
        if role not in constants.ROLES or not isinstance(content, str):
            return f"message {k} is not a {{role: system|user|assistant, content: string}}"
    if not any(m["role"] == constants.ROLE_ASSISTANT for m in messages):
        return "no assistant turn"
    return None


def read_filtered(path: Path) -> Rows:
    """The input table, its ids and conversations; InputError naming file and row on bad input."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means an unreadable file
        raise InputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}")
    ids, conversations = table.column("id").to_pylist(), table.column("messages").to_pylist()
    for row, (row_id, messages) in enumerate(zip(ids, conversations)):
        problem = "id is empty" if not row_id else _problem(messages)
        if problem:
            raise InputError(f"{path}: row {row} (id={row_id!r}): {problem}")
    return Rows(table, ids, conversations)


def read_mix(path: Path, rows: Rows, weights: Sequence[float]) -> Mix:
    """Each row's source index, checked against the configured sources; InputError naming the file and row."""
    if constants.SOURCE_INDEX_COLUMN not in rows.table.column_names:
        raise InputError(f"{path}: no {constants.SOURCE_INDEX_COLUMN} column, which mixing sources by weight needs "
                         "(rows ingested by this version have it)")
    sources = rows.table.column(constants.SOURCE_INDEX_COLUMN).to_pylist()
    for row, index in enumerate(sources):
        if index is None or not 0 <= index < len(weights):
            raise InputError(f"{path}: row {row} (id={rows.ids[row]!r}): source_index {index!r} names none of the "
                             f"{len(weights)} configured source(s)")
    return Mix(tuple(weights), sources)


def source_names(rows: Rows, count: int) -> list[str]:
    """Each source's path, as its rows name it (``source <i>`` for a source with no row here)."""
    names = [f"source {i}" for i in range(count)]
    if constants.SOURCE_COLUMN in rows.table.column_names:
        pairs = zip(rows.table.column(constants.SOURCE_INDEX_COLUMN).to_pylist(),
                    rows.table.column(constants.SOURCE_COLUMN).to_pylist())
        for index, name in dict(pairs).items():
            names[index] = name
    return names


def mix_stats(mix: Mix, split: Split, rows: Rows, train: Part) -> dict:
    """The mix's per-source summary (what each source was asked for, gave, and holds in the written train rows);
    a log line for each source short of its share."""
    summary = mix_summary(split.draws, source_names(rows, len(mix.weights)),
                          [mix.sources[i] for i in train.indices], [e.supervised for e in train.encoded])
    for name, entry in summary.items():
        if entry["rows_short"]:
            log.warning("tokenize: %s (%s) has %d train rows for a share of %d: all are used, %d short",
                        name, entry["source"], entry["rows_available"], entry["rows_asked"], entry["rows_short"])
    return {"mix": summary}


def apply_policy(parts: Sequence[Part], rows: Rows, cfg: TokenizeConfig) -> tuple[list[Part], list[Drop]]:
    """Each part's rows that the truncation policy keeps, and a drop record for each of the others."""
    kept, drops = [], []
    for part in parts:
        positions = []
        for pos, enc in enumerate(part.encoded):
            reason = cfg.truncation.drop_reason(enc)
            if reason is None:
                positions.append(pos)
            else:
                drops += drops_of(rows, [part.indices[pos]], part.name, reason)
        kept.append(part.keep(positions))
    return kept, drops


def encode_part(name: str, indices: Sequence[int], rows: Rows, job: Tokenizing) -> tuple[Part, list[tuple]]:
    """One split's rows encoded, and (row index, problem) for each row that could not be."""
    cfg = job.cfg
    settings = EncodeSettings(max_length=cfg.max_length, train_on=cfg.train_on, truncation=cfg.truncation)
    results = encode_all([rows.conversations[i] for i in indices], job.tokenizer, job.info, settings,
                         batch_rows=cfg.batch_rows, num_proc=cfg.num_proc)
    encoded = [(i, r) for i, r in zip(indices, results) if not isinstance(r, RowProblem)]
    problems = [(i, r) for i, r in zip(indices, results) if isinstance(r, RowProblem)]
    return Part(name, [i for i, _ in encoded], [r for _, r in encoded]), problems


def encode_parts(split: Split, rows: Rows, job: Tokenizing) -> tuple[list[Part], list[Drop]]:
    """The train and held-out rows encoded, and a drop for each row the chat template refuses; VerificationError
    naming every row whose masks cannot be built, ConfigError when the template refuses every row."""
    parts, refused, failures = [], [], []
    for name, indices in ((SPLIT_TRAIN, split.train), (SPLIT_HELDOUT, split.heldout)):
        part, problems = encode_part(name, indices, rows, job)
        parts.append(part)
        refused += [(rows.ids[i], name, problem.message) for i, problem in problems if problem.refused]
        failures += [f"{rows.ids[i]} ({problem.message})" for i, problem in problems if not problem.refused]
    if refused and not failures and not any(part.indices for part in parts):
        row_id, _, message = refused[0]
        raise ConfigError(f"tokenize: {job.template} refuses every row ({len(refused)}), e.g. {row_id}: {message}")
    if failures:
        raise VerificationError(f"tokenize: cannot build label masks for {listed(failures)}")
    return parts, [Drop(row_id, name, f"{DROP_TEMPLATE_REFUSED}: {message}") for row_id, name, message in refused]


def verify(parts: Sequence[Part], rows: Rows, job: Tokenizing) -> list[list[tuple[int, bool]]]:
    """The label-mask gate over every kept row; per part, each row's (end-of-turn count, ends with one)."""
    checked = [[(rows.ids[i], e.input_ids, e.labels, e.cut_inside_turn,
                 target_turns(rows.conversations[i], job.cfg.train_on, e.turns_kept))
                for i, e in zip(part.indices, part.encoded)] for part in parts]
    eots = check_rows([r for part in checked for r in part], job.tokenizer, job.markers,
                      require_eot=job.cfg.truncation.requires_eot)
    bounds = np.cumsum([0, *map(len, checked)])
    return [eots[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def read_ids(path: Path) -> set[str]:
    """The ``id`` column of a Parquet file (the rows a sweep's branches train on); InputError if unreadable."""
    try:
        return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means an unreadable file
        raise InputError(f"{path}: not a Parquet file with an id column ({str(exc).splitlines()[0]})") from None


def tokenize_split(filtered_path: Path, out_dir: Path, tokenizer, cfg: TokenizeConfig, *, seed: int,
                   decontaminate_against: Collection[str] | None = None, template: str | None = None,
                   mix_weights: Sequence[float] | None = None) -> dict:
    """Split, encode, verify and write ``train.parquet``, ``heldout.parquet`` and the mask preview.

    Held-out rows sharing an n-gram with a train row are left out; with ``decontaminate_against``
    (row ids), with one of those rows instead (a sweep's shared held-out set: the rows its branches train on).
    ``template`` names the chat template in messages (default: the tokenizer's). ``mix_weights`` (by source
    index): the train rows are a weighted mix of the sources (``mixing``), summarised per source under ``mix``.
    """
    rows = read_filtered(filtered_path)
    mix = None if mix_weights is None else read_mix(Path(filtered_path), rows, mix_weights)
    template = template or f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"
    job = Tokenizing(tokenizer, learn_template(tokenizer), cfg, template)
    against = None if decontaminate_against is None else \
        [i for i, row_id in enumerate(rows.ids) if row_id in decontaminate_against]
    split = decontaminate(split_by_id(rows.ids, cfg, seed, mix), rows.conversations, cfg.decontaminate_ngram,
                          against=against)
    drops = drops_of(rows, split.decontaminated, SPLIT_HELDOUT, DROP_DECONTAMINATED)
    drops += drops_of(rows, split.not_selected, SPLIT_TRAIN, DROP_NOT_SELECTED if mix is None else DROP_NOT_MIXED)

    encoded, refused = encode_parts(split, rows, job)
    kept, too_long = apply_policy(encoded, rows, cfg)
    drops += refused + too_long
    train, heldout = kept
    train_eot = verify(kept, rows, job)[0]

    stats = write_outputs(Path(out_dir), rows, train, heldout, drops, job)
    stats.update(length_stats(encoded[0].encoded, cfg.max_length))
    stats.update(rows_in=len(rows.ids), heldout_decontaminated=len(split.decontaminated),
                 **{"not_selected_by_max_rows" if mix is None else "not_selected_by_mix": len(split.not_selected)},
                 **drop_counts([d.reason for d in drops]),
                 rows_refused_by_chat_template=len(refused),
                 **truncation_stats(train.encoded), **eot_stats(train_eot),
                 eot_marker_mid=job.info.mid_marker, eot_marker_last=job.info.last_marker,
                 bos_prepended=job.info.bos_id is not None)
    if mix is not None:
        stats.update(mix_stats(mix, split, rows, train))
    return stats
