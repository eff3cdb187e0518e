"""The filter sweep: plan, recommendation logic on fixed metric inputs, and a 2-branch run through the flow."""

from __future__ import annotations


import pytest
import yaml

from sft_pipeline import sweep
from sft_pipeline.config import validate_config
from sft_pipeline.errors import ConfigError
from sft_pipeline.sweep import THRESHOLD, Branch, BranchRow

LOSS = "heldout_loss"


def cfg_with(**train):
    return validate_config({"ingest": {"sources": [{"path": "x"}]}, "train": train})


def test_plan_adds_the_current_setting_and_needs_a_budget():
    assert [b.name for b in sweep.plan(cfg_with(max_steps=5), [0.9])] == ["threshold=0.7", "threshold=0.9"]
    assert [b.current for b in sweep.plan(cfg_with(max_steps=5), [0.7])] == [True]
    with pytest.raises(ConfigError, match="train.max_steps"):
        sweep.plan(cfg_with(), [0.5])
    with pytest.raises(ConfigError, match="at least one setting"):
        sweep.plan(cfg_with(max_steps=5))


def test_heldout_config_keeps_every_row_before_filtering():
    from sft_pipeline import sweep_rows

    base = validate_config({"ingest": {"sources": [{"path": "x"}]}, "filter": {"top_fraction": 0.5},
                            "tokenize": {"max_rows": 10, "max_heldout_rows": 7}})
    branches = sweep.plan(base.model_copy(update={"train": base.train.model_copy(update={"max_steps": 1})}), [0.9])
    cfg = sweep.heldout_config(base)
    assert cfg.filter.threshold == 0.0 and cfg.filter.top_fraction is None
    assert (cfg.tokenize.max_rows, cfg.tokenize.max_heldout_rows) == (10, 7)  # the branches' caps
    # It is decontaminated against the rows of every branch's own filter output.
    assert sorted(sweep_rows.stage([b.name for b in branches]).reads) == ["threshold=0.9", "top_fraction=0.5"]


def test_the_shared_heldout_set_is_checked_against_what_every_branch_trains_on():
    # It was checked against every other row (8,268 on the default data), which left 29 held-out rows; the rows
    # the branches train on are a fraction of those.
    import numpy as np
    import pyarrow as pa

    from sft_pipeline import constants, stages
    from sft_pipeline.config import FilterConfig, TokenizeConfig
    from sft_pipeline.selection import keep_mask
    from sft_pipeline.sweep_rows import train_ids
    from sft_pipeline.tokenize.split import split_rows

    ids = [f"row-{i}" for i in range(600)]
    score = np.random.default_rng(0).random(600)
    settings = [FilterConfig(threshold=0.5), FilterConfig(top_fraction=0.3)]
    kept_by = [[ids[i] for i in np.flatnonzero(keep_mask(score, pa.chunked_array([ids]), s)[0])] for s in settings]
    cfg = TokenizeConfig(heldout_fraction=0.2, max_heldout_rows=40, max_rows=60)
    union = {ids.index(i) for i in train_ids(kept_by, cfg, seed=3)}
    tokenize = stages.get(constants.STAGE_TOKENIZE)  # outside a sweep, tokenize reads no such rows
    assert tokenize.reads_given({constants.STAGE_FILTER: None}) == tokenize.reads
    shared = split_rows(ids, seed=3, heldout_fraction=0.2, max_heldout=40, max_rows=60).heldout
    assert len(shared) == 40 and not union & set(shared)  # no branch trains on a shared held-out row
    kept = [i for i in range(600) if score[i] >= 0.5]  # the threshold branch, as its tokenize stage splits it
    own = split_rows([ids[i] for i in kept], seed=3, heldout_fraction=0.2, max_heldout=40, max_rows=60)
    assert {kept[j] for j in own.train} <= union and 60 < len(union) <= 120


def row(value: float, loss: float, verdict: str = "promoted") -> BranchRow:
    return BranchRow(Branch(THRESHOLD, value, current=value == 0.7), 100, 1000, verdict,
                     metrics={LOSS: {"tuned": loss}})


# Fixed intervals of (b - a) on held-out loss, for the pairs the recommendation asks about.
INTERVALS = {(0.9, 0.8): (-0.01, 0.03), (0.9, 0.5): (0.02, 0.08), (0.9, 0.7): (0.01, 0.05)}


def interval(a: BranchRow, b: BranchRow):
    return INTERVALS.get((a.branch.value, b.branch.value))


def test_recommends_the_best_primary_metric_and_names_the_indistinguishable():
    rows = [row(0.5, 1.50), row(0.7, 1.46), row(0.8, 1.43), row(0.9, 1.42)]
    rec = sweep.recommend(rows, LOSS, -1, interval)  # lower loss is better
    assert rec.best.name == "threshold=0.9"
    assert [b.name for b in rec.indistinguishable] == ["threshold=0.8"]
    assert "threshold=0.9 and threshold=0.8 are indistinguishable at this budget" in rec.sentence


def test_a_branch_the_gate_rejects_is_never_recommended():
    rows = [row(0.5, 1.50), row(0.7, 1.46), row(0.9, 1.20, verdict="not_promoted")]
    rec = sweep.recommend(rows, LOSS, -1, lambda a, b: (0.01, 0.02))
    assert rec.best.name == "threshold=0.7" and rec.indistinguishable == []
    assert sweep.recommend([row(0.9, 1.2, "not_promoted")], LOSS, -1, interval).best is None


def test_higher_is_better_metrics_pick_the_maximum():
    rows = [row(0.5, 0.40), row(0.9, 0.55)]
    assert sweep.recommend(rows, "ifeval_inst_loose", 1, lambda a, b: None).best is None  # no such metric
    rows = [BranchRow(Branch(THRESHOLD, v), 1, 1, "inconclusive", metrics={"acc": {"tuned": t}})
            for v, t in ((0.5, 0.40), (0.9, 0.55))]
    assert sweep.recommend(rows, "acc", 1, lambda a, b: (-0.2, -0.1)).best.name == "threshold=0.9"


def test_apply_writes_a_config_with_the_recommended_setting(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("filter:\n  threshold: 0.7\ntrain:\n  max_steps: 10\n")
    written = sweep.apply(config, Branch(THRESHOLD, 0.9).overrides())
    assert written == tmp_path / "mine.recommended.yaml"
    assert yaml.safe_load(written.read_text())["filter"] == {"threshold": 0.9, "top_fraction": None}
    assert yaml.safe_load(config.read_text())["filter"] == {"threshold": 0.7}  # the original is untouched


@pytest.mark.parametrize("flag, value", [("--thresholds", "nan"), ("--thresholds", "inf"), ("--thresholds", "0.5,1.5"),
                                         ("--top-fractions", "0"), ("--top-fractions", "nan")])
def test_the_commands_own_numbers_are_checked_before_anything_starts(flag, value, capsys):
    # --thresholds nan started the server and ran ingest and score before failing on an internal key
    # (tokenize.decontaminate_for.0.threshold). The config named here does not exist: the numbers come first.
    from flows.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["sweep", flag, value, "--config", "/no/such/config.yaml"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: " in err and "is not a number" in err
    assert "Traceback" not in err and "config file not found" not in err


def test_a_two_branch_sweep_through_the_flow_shares_what_is_the_same(tiny_model_dir, tmp_path):
    # No tiny-data score falls in [0.65, 0.7): both thresholds keep the same rows, so the branches share
    # one tokenize/train/evaluate output (trained once); 0.95 keeps fewer rows and trains its own.
    from pathlib import Path

    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sft_sweep

    root = Path(__file__).resolve().parents[1]
    overrides = [f"run.output_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}",
                 f"ingest.sources=[{{path: '{root / 'tests' / 'data' / 'tiny_chat.jsonl'}'}}]", "train.max_steps=2"]
    with prefect_test_harness(server_startup_timeout=180):
        summary = sft_sweep(config=str(root / "deployments" / "configs" / "tiny.yaml"), overrides=overrides,
                            thresholds=[0.65, 0.95])
    trained = sorted(p.name for p in (tmp_path / "train").iterdir() if not p.name.startswith("."))
    evaluated = sorted(p.name for p in (tmp_path / "evaluate").iterdir() if not p.name.startswith("."))
    assert len(trained) == 2 and len(evaluated) == 2  # three branches, two distinct row sets
    assert len([p for p in (tmp_path / "baseline").iterdir() if not p.name.startswith(".")]) == 1  # base once
    assert set(summary["verdicts"]) == {"threshold=0.65", "threshold=0.7", "threshold=0.95"}
    report = Path(summary["out_dir"], "sweep.md").read_text()
    assert "| threshold=0.65" in report and "(current)" in report and "vs base (95 % CI)" in report
    assert summary["sentence"].startswith(("Recommended:", "No setting is recommended"))
    assert (Path(summary["out_dir"]) / "sweep.html").is_file()
