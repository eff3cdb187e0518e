"""Split, encode, verify, (pack) and write the tokenize stage's token files.

Every input row ends up in exactly one place: ``train.parquet``, ``heldout.parquet``
or ``tokenize_dropped.parquet`` (with its reason). Nothing is written unless every kept
row passes the label-mask gate; under ``whole_turns`` the gate also requires every row to
supervise at least one end-of-turn marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.config import TokenizeConfig
from sft_pipeline.errors import InputError, VerificationError
from sft_pipeline.selection import keep_mask, scores_of
from sft_pipeline.tokenize.encode import EncodeSettings, encode_all
from sft_pipeline.tokenize.masks import TRUNCATE_DROP, TRUNCATE_WHOLE_TURNS, Encoded
from sft_pipeline.tokenize.packing import list_array, pack_rows, packing_efficiency
from sft_pipeline.tokenize.preview import mask_preview
from sft_pipeline.tokenize.split import Split, decontaminate, split_rows
from sft_pipeline.tokenize.template import learn_template
from sft_pipeline.tokenize.verify import MAX_LISTED, check_rows, target_turns

SPLIT_TRAIN, SPLIT_HELDOUT = "train", "heldout"
DROP_DECONTAMINATED = "heldout_ngram_overlap_with_train"
DROP_NOT_SELECTED = "not_in_max_rows_subset"
DROP_TOO_LONG = "longer_than_max_length"
DROP_NO_SUPERVISION = "no_supervised_tokens_after_truncation"
DROP_FIRST_TURN_TOO_LONG = "first_assistant_turn_longer_than_max_length"
REQUIRED_COLUMNS = ("id", "messages")
PERCENTILES = (50, 95)


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


def read_filtered(path: Path) -> tuple[pa.Table, list[str], list[list[dict]]]:
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
    return table, ids, conversations


def _drops(ids: Sequence[str], indices: Sequence[int], split: str, reason: str) -> list[dict]:
    return [{"id": ids[i], "split": split, "reason": reason} for i in indices]


def _apply_policy(indices: Sequence[int], encoded: Sequence[Encoded], cfg: TokenizeConfig, ids: Sequence[str],
                  split: str) -> tuple[list[int], list[dict]]:
    """Positions (into ``indices``) kept after the truncation policy, and the drop records."""
    kept, drops = [], []
    for pos, enc in enumerate(encoded):
        if enc.truncated and cfg.truncation == TRUNCATE_DROP:
            drops += _drops(ids, [indices[pos]], split, DROP_TOO_LONG)
        elif enc.turns_kept == 0:  # whole_turns: the first assistant turn does not fit; never cut
            drops += _drops(ids, [indices[pos]], split, DROP_FIRST_TURN_TOO_LONG)
        elif enc.truncated and enc.supervised == 0:
            drops += _drops(ids, [indices[pos]], split, DROP_NO_SUPERVISION)
        else:
            kept.append(pos)
    return kept, drops


def _encode_parts(split: Split, ids, conversations, tokenizer, info, cfg) -> dict[str, tuple[list, list]]:
    """Encode the train and held-out rows; VerificationError naming every row that cannot be encoded."""
    settings = EncodeSettings(max_length=cfg.max_length, train_on=cfg.train_on, truncation=cfg.truncation)
    parts, failures = {}, []
    for name, indices in ((SPLIT_TRAIN, split.train), (SPLIT_HELDOUT, split.heldout)):
        results = encode_all([conversations[i] for i in indices], tokenizer, info, settings,
                             batch_rows=cfg.batch_rows, num_proc=cfg.num_proc)
        failures += [f"{ids[i]} ({r})" for i, r in zip(indices, results) if isinstance(r, str)]
        parts[name] = (indices, results)
    if failures:
        more = f" and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
        raise VerificationError(f"tokenize: cannot build label masks for {len(failures)} row(s): "
                                f"{'; '.join(failures[:MAX_LISTED])}{more}")
    return parts


def _length_stats(encoded: Sequence[Encoded], max_length: int) -> dict:
    full = np.array([e.full_length for e in encoded], dtype=np.int64)
    if not len(full):
        return {"length_p50": 0, "length_p95": 0, "length_max": 0, "pct_truncated_at_max_length": 0.0}
    p50, p95 = np.percentile(full, PERCENTILES)
    return {"length_p50": int(p50), "length_p95": int(p95), "length_max": int(full.max()),
            "pct_truncated_at_max_length": round(100.0 * float((full > max_length).mean()), 2)}


def _preview_positions(conversations: Sequence[list[dict]], count: int) -> list[int]:
    """Multi-turn rows first (they show earlier turns supervised), then input order."""
    turns = [sum(m["role"] == constants.ROLE_ASSISTANT for m in conv) for conv in conversations]
    return sorted(range(len(conversations)), key=lambda p: (turns[p] < 2, p))[:count]


def split_by_id(ids: Sequence[str], cfg: TokenizeConfig, seed: int) -> Split:
    """The held-out / train split of these rows under ``cfg``'s rules (the same rules for every branch of a sweep)."""
    return split_rows(ids, seed=seed, heldout_fraction=cfg.heldout_fraction, max_heldout=cfg.max_heldout_rows,
                      max_rows=cfg.max_rows)


def branch_train_rows(table: pa.Table, ids: Sequence[str], cfg: TokenizeConfig, seed: int) -> list[int] | None:
    """The rows that the filter settings of ``cfg.decontaminate_for`` would each select for training from these
    rows (same split rules), together; None when unset (held-out rows are checked against this config's own)."""
    if not cfg.decontaminate_for:
        return None
    if constants.SCORE_COLUMN not in table.column_names:
        raise InputError(f"tokenize.decontaminate_for needs the {constants.SCORE_COLUMN!r} column of the filter stage")
    score = scores_of(table)
    rows: set[int] = set()
    for setting in cfg.decontaminate_for:
        kept = np.flatnonzero(keep_mask(score, table.column("id"), setting)[0])
        rows.update(int(kept[j]) for j in split_by_id([ids[i] for i in kept], cfg, seed).train)
    return sorted(rows)


def tokenize_split(filtered_path: Path, out_dir: Path, tokenizer, cfg: TokenizeConfig, *, seed: int) -> dict:
    """Split, encode, verify and write ``train.parquet``, ``heldout.parquet`` and the mask preview."""
    out_dir = Path(out_dir)
    table, ids, conversations = read_filtered(filtered_path)
    info = learn_template(tokenizer)
    split = decontaminate(split_by_id(ids, cfg, seed), conversations, cfg.decontaminate_ngram,
                          against=branch_train_rows(table, ids, cfg, seed))
    drops = _drops(ids, split.decontaminated, SPLIT_HELDOUT, DROP_DECONTAMINATED)
    drops += _drops(ids, split.not_selected, SPLIT_TRAIN, DROP_NOT_SELECTED)

    parts = _encode_parts(split, ids, conversations, tokenizer, info, cfg)
    kept: dict[str, tuple[list[int], list[Encoded]]] = {}
    for name, (indices, encoded) in parts.items():
        positions, split_drops = _apply_policy(indices, encoded, cfg, ids, name)
        kept[name] = ([indices[p] for p in positions], [encoded[p] for p in positions])
        drops += split_drops
    train_eot = _verify(kept, ids, conversations, tokenizer, info, cfg)[SPLIT_TRAIN]

    stats = _write_outputs(out_dir, table, ids, conversations, kept, drops, tokenizer, info, cfg)
    reasons = [d["reason"] for d in drops]
    stats.update(_length_stats(parts[SPLIT_TRAIN][1], cfg.max_length))
    stats.update(rows_in=len(ids), heldout_decontaminated=len(split.decontaminated),
                 not_selected_by_max_rows=len(split.not_selected), dropped_too_long=reasons.count(DROP_TOO_LONG),
                 dropped_no_supervised_tokens=reasons.count(DROP_NO_SUPERVISION),
                 rows_dropped_first_turn_too_long=reasons.count(DROP_FIRST_TURN_TOO_LONG),
                 **_truncation_stats(kept[SPLIT_TRAIN][1]), **eot_stats(train_eot),
                 eot_marker_mid=info.mid_marker, eot_marker_last=info.last_marker,
                 bos_prepended=info.bos_id is not None)
    return stats


def _verify(kept, ids, conversations, tokenizer, info, cfg) -> dict[str, list[tuple[int, bool]]]:
    """The label-mask gate over every kept row; per split, each row's (end-of-turn count, ends with one)."""
    rows = {name: [(ids[i], e.input_ids, e.labels, e.cut_inside_turn,
                    target_turns(conversations[i], cfg.train_on, e.turns_kept)) for i, e in zip(idx, enc)]
            for name, (idx, enc) in kept.items()}
    eots = check_rows([r for part in rows.values() for r in part], tokenizer, (info.mid_marker, info.last_marker),
                      require_eot=cfg.truncation == TRUNCATE_WHOLE_TURNS)
    train_count = len(rows[SPLIT_TRAIN])
    return {SPLIT_TRAIN: eots[:train_count], SPLIT_HELDOUT: eots[train_count:]}


def _truncation_stats(encoded: Sequence[Encoded]) -> dict:
    """Train rows shortened to whole turns and the assistant turns that left out (whole_turns)."""
    return {"rows_shortened": sum(e.truncated and not e.cut_inside_turn for e in encoded),
            "assistant_turns_dropped": sum(e.turns_dropped for e in encoded),
            "assistant_turns_kept": sum(e.turns if e.turns_kept is None else e.turns_kept for e in encoded)}


def eot_stats(eots: Sequence[tuple[int, bool]]) -> dict:
    """Supervised end-of-turn markers per train row.

    >>> eot_stats([(2, True), (0, False), (1, True), (1, False)])["eot_per_row_mean"]
    1.0
    >>> eot_stats([(2, True), (0, False), (1, True), (1, False)])["pct_rows_ending_in_eot"]
    50.0
    """
    counts = np.array([c for c, _ in eots], dtype=np.int64)
    if not len(counts):
        return {"eot_supervised": 0, "eot_per_row_min": 0, "eot_per_row_mean": 0.0, "eot_per_row_max": 0,
                "rows_without_eot": 0, "pct_rows_ending_in_eot": 0.0}
    return {"eot_supervised": int(counts.sum()), "eot_per_row_min": int(counts.min()),
            "eot_per_row_mean": round(float(counts.mean()), 3), "eot_per_row_max": int(counts.max()),
            "rows_without_eot": int((counts == 0).sum()),
            "pct_rows_ending_in_eot": round(100.0 * sum(last for _, last in eots) / len(eots), 2)}


def _write_outputs(out_dir, table, ids, conversations, kept, drops, tokenizer, info, cfg) -> dict:
    train_idx, train_enc = kept[SPLIT_TRAIN]
    held_idx, held_enc = kept[SPLIT_HELDOUT]
    train_ids = [ids[i] for i in train_idx]
    input_ids = list_array([e.input_ids for e in train_enc])
    labels = list_array([e.labels for e in train_enc])
    stats: dict = {"train_rows": len(train_idx), "heldout_rows": len(held_idx)}
    if cfg.packing:
        train_table = pack_rows(train_ids, input_ids, labels, cfg.max_length)
        stats.update(packed_rows=train_table.num_rows,
                     packing_efficiency=round(packing_efficiency(train_table, cfg.max_length), 4))
    else:
        train_table = pa.table({"id": pa.array(train_ids, pa.string()), "input_ids": input_ids, "labels": labels})
    pq.write_table(train_table, out_dir / constants.TRAIN_TOKENS_FILE)
    held_table = pa.table({
        "id": pa.array([ids[i] for i in held_idx], pa.string()),
        "messages": table.column("messages").take(pa.array(held_idx, pa.int64())),
        "input_ids": list_array([e.input_ids for e in held_enc]),
        "labels": list_array([e.labels for e in held_enc]),
    })
    pq.write_table(held_table, out_dir / constants.HELDOUT_TOKENS_FILE)
    schema = pa.schema([("id", pa.string()), ("split", pa.string()), ("reason", pa.string())])
    pq.write_table(pa.Table.from_pylist(drops, schema=schema), out_dir / constants.TOKENIZE_DROPPED_FILE)
    stats.update(
        truncated_rows=sum(e.truncated for e in train_enc),
        supervised_tokens=sum(e.supervised for e in train_enc),
        train_tokens=sum(len(e.input_ids) for e in train_enc),
        dropped_rows=len(drops),
    )
    preview = _preview_positions([conversations[i] for i in train_idx], cfg.preview_rows)
    rows = [(train_ids[p], train_enc[p].input_ids, train_enc[p].labels) for p in preview]
    preview_text = mask_preview(rows, tokenizer, (info.mid_marker, info.last_marker))
    (out_dir / constants.MASK_PREVIEW_FILE).write_text(preview_text)
    return stats
