"""The rows a sweep's branches train on, as one file that the sweep's shared held-out set is checked against.

A branch trains on its filter stage's kept rows, split by the tokenize stage's rules
(``tokenize.split.split_by_id``, as its own tokenize stage splits them). The ids of those rows,
over every branch, are written to ``train_ids.parquet``; the sweep hands that output to the
tokenize stage that draws the shared held-out set (an optional read of the tokenize stage), which
keys on its content and leaves out each held-out row sharing an n-gram with one of those rows.

The step reads one filter output per branch, so its declaration is built from the branch names.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from sft_pipeline.config import TokenizeConfig
from sft_pipeline.constants import FILTERED_FILE, SOURCE_INDEX_COLUMN, STAGE_SWEEP_TRAIN_IDS, TRAIN_IDS_FILE
from sft_pipeline.stages import MIX_WEIGHTS, Stage, StageRun
from sft_pipeline.tokenize.mixing import Mix
from sft_pipeline.tokenize.split import split_by_id

SPLIT_SECTIONS = ("tokenize.heldout_fraction", "tokenize.max_heldout_rows", "tokenize.max_rows", "run.seed",
                  MIX_WEIGHTS)


def stage(branches: Sequence[str]) -> Stage:
    """The step's declaration: it reads the filter output of each named branch.

    >>> sorted(stage(["threshold=0.5", "top_fraction=0.8"]).reads)
    ['threshold=0.5', 'top_fraction=0.8']
    """
    return Stage(STAGE_SWEEP_TRAIN_IDS, f"{__name__}:run_stage", reads={b: (FILTERED_FILE,) for b in branches},
                 sections=SPLIT_SECTIONS, writes=(TRAIN_IDS_FILE,))


def train_ids(branch_ids: Iterable[Sequence[str]], cfg: TokenizeConfig, seed: int,
              mixes: Iterable[Mix | None] | None = None) -> list[str]:
    """The ids that any branch trains on (sorted), given each branch's kept ids (and, when the sources are mixed
    by weight, each branch's ``Mix``), under ``cfg``'s split rules.

    >>> cfg = TokenizeConfig(heldout_fraction=0.0, max_rows=1)
    >>> train_ids([["a", "b"], ["c"]], cfg, seed=0) in (["a", "c"], ["b", "c"])
    True
    """
    union: set[str] = set()
    for ids, mix in zip(branch_ids, mixes or itertools.repeat(None)):
        union.update(ids[i] for i in split_by_id(ids, cfg, seed, mix).train)
    return sorted(union)


def branch_rows(folder, weights: Sequence[float] | None) -> tuple[list[str], Mix | None]:
    """One branch's kept ids, and their mix when the sources have weights."""
    columns = ["id"] if weights is None else ["id", SOURCE_INDEX_COLUMN]
    table = pq.read_table(folder / FILTERED_FILE, columns=columns)
    ids = table.column("id").to_pylist()
    return ids, None if weights is None else Mix(tuple(weights), table.column(SOURCE_INDEX_COLUMN).to_pylist())


def run_stage(run: StageRun) -> dict:
    """Write ``train_ids.parquet`` from the filter output of every branch in ``run.inputs``."""
    kept, mixes = zip(*(branch_rows(folder, run.cfg.ingest.mix_weights) for folder in run.inputs.values()))
    ids = train_ids(kept, run.cfg.tokenize, run.cfg.run.seed, mixes)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), run.out / TRAIN_IDS_FILE)
    return {"branches": len(kept), "train_ids": len(ids)}
