"""Best-fit-decreasing packing: no token lost, boundaries kept, TRL's collator reads it as is."""

from __future__ import annotations

import random

import pyarrow.compute as pc
import pytest
import torch

from sft_pipeline.constants import IGNORE_INDEX
from sft_pipeline.tokenize.packing import list_array, pack_rows, packing_efficiency

MAX_LENGTH = 64


@pytest.fixture()
def rows():
    rng = random.Random(0)
    ids, input_ids, labels = [], [], []
    for i in range(200):
        n = rng.randint(1, MAX_LENGTH)
        toks = [rng.randint(3, 30000) for _ in range(n)]
        cut = rng.randint(0, n - 1)
        ids.append(f"row-{i}")
        input_ids.append(toks)
        labels.append([IGNORE_INDEX] * cut + toks[cut:])
    return ids, input_ids, labels


def test_packing_keeps_every_row_whole_and_restarts_positions(rows):
    ids, input_ids, labels = rows
    packed = pack_rows(ids, list_array(input_ids), list_array(labels), MAX_LENGTH).to_pylist()
    by_id = {i: (t, lab) for i, t, lab in zip(ids, input_ids, labels)}
    seen = []
    for row in packed:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lengths"])
        assert sum(row["seq_lengths"]) <= MAX_LENGTH
        assert len(row["ids"]) == len(row["seq_lengths"])
        start = 0
        for row_id, length in zip(row["ids"], row["seq_lengths"]):
            toks, labs = by_id[row_id]
            assert row["input_ids"][start : start + length] == toks
            assert row["labels"][start : start + length] == labs  # every supervised token kept
            assert row["position_ids"][start : start + length] == list(range(length))
            start += length
        seen += row["ids"]
    assert sorted(seen) == sorted(ids)  # each row exactly once


def test_best_fit_decreasing_fills_bins(rows):
    ids, input_ids, labels = rows
    packed = pack_rows(ids, list_array(input_ids), list_array(labels), MAX_LENGTH)
    total = sum(len(t) for t in input_ids)
    lower_bound = -(-total // MAX_LENGTH)
    assert packed.num_rows < len(ids) and packed.num_rows <= lower_bound * 1.1
    assert packing_efficiency(packed, MAX_LENGTH) == pytest.approx(total / (packed.num_rows * MAX_LENGTH))
    assert pc.max(pc.list_value_length(packed.column("input_ids"))).as_py() <= MAX_LENGTH


def test_row_longer_than_max_length_is_refused():
    with pytest.raises(ValueError, match="exceeds max_length"):
        pack_rows(["a"], list_array([[1] * 9]), list_array([[1] * 9]), 8)


def test_trl_padding_free_collator_reads_packed_rows(rows):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    ids, input_ids, labels = rows
    packed = pack_rows(ids, list_array(input_ids), list_array(labels), MAX_LENGTH).to_pylist()[:4]
    examples = [{k: r[k] for k in ("input_ids", "labels", "seq_lengths")} for r in packed]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    ours = torch.tensor([p for r in packed for p in r["position_ids"]])
    assert torch.equal(batch["position_ids"][0], ours)
    assert torch.equal(batch["input_ids"][0], torch.tensor([t for r in packed for t in r["input_ids"]]))
    expected = torch.tensor([lab for r in packed for lab in r["labels"]])
    expected[ours == 0] = IGNORE_INDEX  # the collator never trains a sequence's first token
    assert torch.equal(batch["labels"][0], expected)


def test_no_rows_pack_into_an_empty_table_of_the_same_columns(rows):
    # Every train row dropped (e.g. longer than max_length under truncation=drop) was a ValueError traceback
    # from TRL's packing.
    ids, input_ids, labels = rows
    full = pack_rows(ids[:3], list_array(input_ids[:3]), list_array(labels[:3]), MAX_LENGTH)
    empty = pack_rows([], list_array([]), list_array([]), MAX_LENGTH)
    assert empty.num_rows == 0 and empty.schema == full.schema
    assert packing_efficiency(empty, MAX_LENGTH) == 0.0
