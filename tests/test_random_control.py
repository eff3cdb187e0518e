"""`sweep --random-control`: the random-rows filter, each setting's control (same rows kept, same budget), the
report's verdict against random on fixed inputs, and a setting whose rows equal its control's through the flow."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline import constants, sweep, sweep_report
from sft_pipeline.config import FilterConfig, validate_config
from sft_pipeline.errors import ConfigError
from sft_pipeline.filter.split import filter_scored
from sft_pipeline.sweep import RANDOM_ROWS, THRESHOLD, Branch, BranchRow

ROOT = Path(__file__).resolve().parents[1]
LOSS = "heldout_loss"


def write_scores(path: Path, n: int = 200, shuffle: bool = False) -> Path:
    rows = [{"id": f"row-{i:03d}", "messages": [{"role": "user", "content": f"q{i}"}],
             constants.SCORE_COLUMN: round(i / n, 3), constants.TOKENS_EST_COLUMN: 10} for i in range(n)]
    if shuffle:
        random.Random(1).shuffle(rows)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=64)
    return path


def kept(tmp_path: Path, name: str, cfg: FilterConfig, seed: int = 0, shuffle: bool = False) -> tuple[dict, list]:
    out = tmp_path / name
    out.mkdir()
    summary = filter_scored(write_scores(tmp_path / f"{name}.parquet", shuffle=shuffle), out, cfg, seed=seed)
    return summary, sorted(pq.read_table(out / constants.FILTERED_FILE).column("id").to_pylist())


def test_random_rows_keeps_that_many_rows_whatever_their_score_by_seed(tmp_path):
    summary, ids = kept(tmp_path, "a", FilterConfig(random_rows=50), seed=3)
    assert len(ids) == summary["rows_kept"] == 50 and summary["rows_dropped"] == 150
    assert summary["method"] == "random_rows" and summary["cutoff"] is None
    scores = [int(i.split("-")[1]) / 200 for i in ids]
    assert min(scores) < 0.25 and max(scores) > 0.75  # drawn from the whole pool, not by score
    assert kept(tmp_path, "b", FilterConfig(random_rows=50), seed=3, shuffle=True)[1] == ids  # any row order
    assert kept(tmp_path, "c", FilterConfig(random_rows=50), seed=4)[1] != ids  # the seed draws
    assert kept(tmp_path, "d", FilterConfig(random_rows=500), seed=3)[0]["rows_kept"] == 200  # fewer rows: all
    with pytest.raises(Exception, match="top_fraction or random_rows, not both"):
        FilterConfig(random_rows=5, top_fraction=0.5)


def test_each_control_keeps_as_many_rows_as_its_setting_with_the_same_budget(tmp_path):
    cfg = validate_config({"ingest": {"sources": [{"path": "x"}]}, "train": {"max_steps": 7},
                           "run": {"seed": 5}, "tokenize": {"max_rows": 90}})
    branches = sweep.plan(cfg, [0.5, 0.9], [0.3])
    settings = {b.name: sweep.derive(cfg, b.overrides()) for b in branches}
    counts = {name: kept(tmp_path, name, c.filter, seed=c.run.seed)[0]["rows_kept"] for name, c in settings.items()}
    controls = sweep.controls(branches, counts)
    assert set(controls) == set(settings)
    for name, control in controls.items():
        derived = sweep.derive(cfg, control.overrides())
        rows, _ = kept(tmp_path, f"control-{name}", derived.filter, seed=derived.run.seed)
        assert rows["rows_kept"] == counts[name] and rows["method"] == RANDOM_ROWS
        same = ("train", "tokenize", "eval", "model", "run")
        assert all(getattr(derived, s) == getattr(settings[name], s) for s in same)  # same seed, budget, tests
        assert derived.train.max_steps == 7
    with pytest.raises(ConfigError, match="random_rows is set"):
        sweep.plan(sweep.derive(cfg, ["filter.random_rows=3"]), [0.5])


def results(losses: list[float]) -> dict:
    """An evaluation's results with the held-out loss of each item (the same items for every branch)."""
    mean = float(np.mean(losses))
    return {"benchmarks": [], "metrics": {"base": {LOSS: 2.0}, "tuned": {LOSS: mean}},
            "items": {LOSS: {"base": [2.0] * len(losses), "tuned": losses, "weights": [1.0] * len(losses)}}}


def test_the_report_says_whether_each_setting_beats_its_random_control():
    rng = np.random.default_rng(0)
    control = list(1.5 + rng.normal(0, 0.2, 40))
    evals = {"random_rows=40": control,
             "threshold=0.5": [x - 0.1 for x in control],  # lower loss on every item: beats random
             "threshold=0.7": [x + 0.1 for x in control],  # higher on every item: worse than random
             "threshold=0.9": [x + rng.normal(0, 0.2) for x in control]}  # noise around it: indistinguishable
    evals = {name: results(v) for name, v in evals.items()}
    by_name = {b.name: b for b in [Branch(THRESHOLD, 0.5), Branch(THRESHOLD, 0.7, True), Branch(THRESHOLD, 0.9),
                                   Branch(RANDOM_ROWS, 40)]}
    rows = [BranchRow(b, 40, 400, "promoted", metrics={LOSS: {"tuned": evals[n]["metrics"]["tuned"][LOSS]}})
            for n, b in by_name.items()]
    controls = {"threshold=0.5": "random_rows=40", "threshold=0.7": "random_rows=40", "threshold=0.9": "random_rows=40"}
    sweep_report.add_controls(rows, controls, by_name, evals, resamples=1000, seed=0)
    outcome = {r.branch.name: sweep_report.control_fields(r, LOSS).get("against_random") for r in rows}
    assert outcome == {"threshold=0.5": sweep.BEATS, "threshold=0.7": sweep.WORSE_THAN,
                       "threshold=0.9": sweep.INDISTINGUISHABLE, "random_rows=40": None}
    beats = rows[0].versus_control[LOSS]
    assert beats["delta"] == pytest.approx(-0.1) and beats["high"] < 0  # setting minus control, paired
    text = "\n".join(sweep_report.control_section(rows, LOSS, "Held-out loss"))
    assert "## Does each setting beat random rows?" in text
    assert "| threshold=0.5 | 40 | random_rows=40 |" in text and text.count("| random_rows=40 |") == 3
    rec = sweep.recommend([*rows[:3], BranchRow(Branch(RANDOM_ROWS, 10), 10, 100, "promoted",
                                                metrics={LOSS: {"tuned": 0.1}})], LOSS, -1, lambda a, b: (1, 2))
    assert rec.best.name == "threshold=0.5"  # a random control, however good, is never recommended


def test_a_setting_whose_rows_equal_its_random_sample_is_reported_as_no_difference(tiny_model_dir, tmp_path):
    # A threshold of 0 keeps every row, so its random control (as many random rows) keeps the same rows: the
    # branches share one tokenize/train/evaluate output, and the paired difference is exactly 0.
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sft_sweep

    overrides = [f"run.output_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}",
                 f"ingest.sources=[{{path: '{ROOT / 'tests' / 'data' / 'tiny_chat.jsonl'}'}}]", "train.max_steps=2",
                 "filter.threshold=0.0"]
    with prefect_test_harness(server_startup_timeout=180):
        summary = sft_sweep(config=str(ROOT / "deployments" / "configs" / "tiny.yaml"), overrides=overrides,
                            thresholds=[0.0], random_control=True)
    assert len([p for p in (tmp_path / "train").iterdir() if not p.name.startswith(".")]) == 1
    assert summary["against_random"] == {"threshold=0": sweep.INDISTINGUISHABLE}
    (control,) = [name for name in summary["verdicts"] if name.startswith(RANDOM_ROWS)]
    filters = [pq.read_metadata(p / constants.FILTERED_FILE).num_rows for p in (tmp_path / "filter").iterdir()
               if (p / constants.FILTERED_FILE).is_file()]
    assert control == f"random_rows={max(filters)}"
    report = Path(summary["out_dir"], "sweep.md").read_text()
    assert "| threshold=0 | " in report and "| indistinguishable from random |" in report
