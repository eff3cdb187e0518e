"""Filter stage: threshold vs top_fraction, kept + dropped == input, sweep, histogram, errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline import constants
from sft_pipeline.config import FilterConfig
from sft_pipeline.errors import InputError
from sft_pipeline.filter.split import filter_scored
from sft_pipeline.score import defaults

SCORES = [1.0, 0.7, 0.5, 0.9, 0.0, 0.7, 0.3, 1.0, 0.6, 0.8]
IDS = ["j", "b", "c", "d", "e", "a", "g", "h", "i", "f"]


def write_scores(path, scores=SCORES, ids=IDS):
    n = len(scores)
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "messages": pa.array([[{"role": "user", "content": f"q{i}"}] for i in range(n)]),
        constants.SCORE_COLUMN: pa.array(scores, pa.float64()),
        constants.TOKENS_EST_COLUMN: pa.array([10 * (i + 1) for i in range(n)], pa.int64()),
        constants.REASONS_COLUMN: pa.array([[] if s == 1.0 else [defaults.SIGNAL_TOO_SHORT] for s in scores],
                                   pa.list_(pa.string())),
    })
    pq.write_table(table, path, row_group_size=3)  # several batches
    return path


def run(tmp_path, **cfg):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = write_scores(tmp_path / constants.SCORES_FILE)
    out = tmp_path / "out"
    out.mkdir()
    summary = filter_scored(src, out, FilterConfig(**cfg))
    kept = pq.read_table(out / constants.FILTERED_FILE).to_pylist()
    dropped = pq.read_table(out / constants.DROPPED_FILE).to_pylist()
    return summary, kept, dropped, out


def test_threshold_keeps_scores_at_or_above(tmp_path):
    summary, kept, dropped, _ = run(tmp_path, threshold=0.7)
    assert sorted(r["id"] for r in kept) == ["a", "b", "d", "f", "h", "j"]  # 0.7 itself is kept
    assert all(r[constants.SCORE_COLUMN] < 0.7 and r[constants.DROPPED_BY_COLUMN] == "threshold" for r in dropped)
    assert dropped[0][constants.REASONS_COLUMN] == [defaults.SIGNAL_TOO_SHORT]  # dropped rows keep their reasons
    assert summary["rows_kept"] == 6 and summary["rows_dropped"] == 4 and summary["method"] == "threshold"
    assert summary["tokens_kept"] == sum(10 * (i + 1) for i, s in enumerate(SCORES) if s >= 0.7)


def test_kept_plus_dropped_is_every_input_row(tmp_path):
    for cfg in ({"threshold": 0.0}, {"threshold": 1.0}, {"threshold": 0.65}, {"top_fraction": 0.35}):
        summary, kept, dropped, out = run(tmp_path / str(cfg), **cfg)
        assert len(kept) + len(dropped) == len(SCORES) == summary["rows_in"]
        assert sorted(r["id"] for r in kept + dropped) == sorted(IDS)
        assert set(pq.read_schema(out / constants.FILTERED_FILE).names) >= {"messages", constants.SCORE_COLUMN}


def test_top_fraction_ranks_by_score_then_id(tmp_path):
    summary, kept, dropped, _ = run(tmp_path, top_fraction=0.5)
    # 5 of 10 rows: 1.0 (h, j), 0.9 (d), 0.8 (f), then one of the two 0.7s: "a" before "b".
    assert sorted(r["id"] for r in kept) == ["a", "d", "f", "h", "j"]
    assert {r["id"]: r[constants.DROPPED_BY_COLUMN] for r in dropped}["b"] == "top_fraction"
    assert summary["method"] == "top_fraction" and summary["cutoff"] == 0.7


def test_threshold_and_top_fraction_differ_on_the_same_scores(tmp_path):
    by_threshold, *_ = run(tmp_path / "t", threshold=0.7)
    by_fraction, *_ = run(tmp_path / "f", top_fraction=0.8)
    assert by_threshold["rows_kept"] == 6 and by_fraction["rows_kept"] == 8


def test_sweep_is_monotonic_and_matches_the_file(tmp_path):
    summary, _, _, out = run(tmp_path)
    sweep = json.loads((out / constants.SWEEP_FILE).read_text())
    assert sweep == summary["sweep"]
    assert [s["threshold"] for s in sweep] == [round(0.1 * i, 1) for i in range(11)]
    rows, tokens = [s["rows"] for s in sweep], [s["tokens"] for s in sweep]
    assert rows == sorted(rows, reverse=True) and tokens == sorted(tokens, reverse=True)
    assert rows[0] == len(SCORES) and rows[7] == 6 and rows[10] == 2
    assert sweep[7]["tokens"] == summary["tokens_kept"]


def test_histogram_is_a_png(tmp_path):
    _, _, _, out = run(tmp_path)
    assert (out / constants.HISTOGRAM_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_scores_file(tmp_path):
    src = write_scores(tmp_path / "s.parquet", scores=[], ids=[])
    summary = filter_scored(src, tmp_path, FilterConfig(top_fraction=0.8))
    assert summary["rows_kept"] == summary["rows_dropped"] == 0
    assert pq.read_table(tmp_path / constants.FILTERED_FILE).num_rows == 0
    assert (tmp_path / constants.HISTOGRAM_FILE).exists()


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        filter_scored(tmp_path / "none.parquet", tmp_path, FilterConfig())
    pq.write_table(pa.table({"id": ["a"], "messages": [[]]}), tmp_path / "conv.parquet")
    with pytest.raises(InputError, match="missing column.*score.*run the score stage"):
        filter_scored(tmp_path / "conv.parquet", tmp_path, FilterConfig())


def test_random_scores_keep_the_invariant(tmp_path):
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 1).tolist()
    src = write_scores(tmp_path / "s.parquet", scores=scores, ids=[f"id{i:03d}" for i in range(500)])
    summary = filter_scored(src, tmp_path, FilterConfig(top_fraction=0.8))
    assert summary["rows_kept"] == 400 and summary["rows_kept"] + summary["rows_dropped"] == 500
    kept = pq.read_table(tmp_path / constants.FILTERED_FILE).column(constants.SCORE_COLUMN).to_numpy()
    dropped = pq.read_table(tmp_path / constants.DROPPED_FILE).column(constants.SCORE_COLUMN).to_numpy()
    assert kept.min() >= dropped.max()
