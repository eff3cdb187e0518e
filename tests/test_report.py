"""Report rendering: Markdown order and content, self-contained HTML, re-rendering from a run folder."""

import json
import re
import shutil
from pathlib import Path

import pytest

from sft_pipeline import constants
from sft_pipeline.config import GateConfig
from sft_pipeline.errors import InputError
from sft_pipeline.evaluate.model_eval import METRICS, Inputs, ModelEval, build_results, comparison
from sft_pipeline.evaluate.behaviour import response_record
from sft_pipeline.evaluate.gate import run_gate
from sft_pipeline.evaluate.generate import Generation
from sft_pipeline.files import write_json
from sft_pipeline.report import render_report, write_run_file
from sft_pipeline.report.plots import loss_curve

IFEVAL_ROW = {"key": 1, "prompt": "No commas please.", "instruction_id_list": ["punctuation:no_comma"],
              "kwargs": [{}]}
QUESTION = {"id": 81, "category": "writing", "prompt": "Write <b>bold</b> things."}
VERDICT_OK = {"prompt_strict": True, "inst_strict": [True], "prompt_loose": True, "inst_loose": [True]}
VERDICT_KO = {"prompt_strict": False, "inst_strict": [False], "prompt_loose": False, "inst_loose": [False]}


ROW_TOKENS = [1.0, 2.0, 3.0]


def record(prompt: str, text: str, new_tokens: int) -> dict:
    return {"text": text, **response_record(Generation(prompt, text, new_tokens, True))}


def model_eval(loss: float, ifeval: float, answer: str, verdict: dict) -> ModelEval:
    metrics = {m: 0.5 for m in METRICS}
    metrics.update(heldout_loss=loss, heldout_perplexity=2.718 ** loss, ifeval_inst_loose=ifeval,
                   heldout_rows=3, heldout_tokens=42)
    ev = ModelEval(metrics, verdicts={"ifeval": [verdict]}, responses={"ifeval": [record("p", "a, b", 4)]},
                   question_responses=[record(QUESTION["prompt"], answer, 12)])
    ev.items["heldout_loss"] = ([loss * n for n in ROW_TOKENS], ROW_TOKENS)  # every row moves by the same amount
    return ev


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A finished evaluate folder made from hand-written results and stage folders."""
    stages = {s: tmp_path / "stages" / s for s in ("ingest", "filter", "train")}
    for name, path in stages.items():
        path.mkdir(parents=True)
        write_json(path / constants.MANIFEST_FILE, {"key": "k", "counts": {"rows": 5}, "config": {"threshold": 0.7},
                                            "duration_s": 1.0})
    write_json(stages["filter"] / constants.SWEEP_FILE, [{"threshold": 0.7, "rows": 5, "tokens": 99}])
    loss_curve([1, 2], [1.0, 0.5], stages["filter"] / constants.HISTOGRAM_FILE)  # any PNG will do
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]
    write_json(stages["train"] / constants.METRICS_FILE, {"log_history": history})
    base = model_eval(2.0, 0.4, "Base answer.", VERDICT_KO)
    tuned = model_eval(2.5, 0.6, "```\n<script>alert(1)</script>\n```", VERDICT_OK)
    compared = comparison(base, tuned, resamples=200, seed=0)
    gate = run_gate(base.metrics, tuned.metrics, GateConfig(), compared[0])
    results = build_results(Inputs([], {"ifeval": [IFEVAL_ROW]}, [QUESTION]), base, tuned, gate,
                            {"model": "tiny", "seed": 0, "config": {"max_new_tokens": 8}}, compared)
    out = tmp_path / "runs" / constants.STAGE_EVALUATE / "abc"
    out.mkdir(parents=True)
    write_json(out / constants.EVAL_RESULTS_FILE, results)
    write_run_file(out, stages)
    return out


def test_markdown_has_summary_first_and_every_section(run_dir):
    md_path, _ = render_report(run_dir)
    text = md_path.read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "Summary: base vs tuned"
    assert headings[1:] == ["Before and after: base vs tuned answers", "Regression gate", "Data", "Training",
                            "Instruction following (IFEval checks)"]
    assert "NOT promoted" in text and "`heldout_loss`" in text  # loss rose by 0.5 > 0
    assert "| Held-out loss (assistant tokens) | 2.000 | 2.500 | +0.500 | worse |" in text
    assert "| 0.700 (used) | 5 | 99 |" in text  # sweep, configured threshold marked
    assert "Training loss 3.000 at step 1 -> 2.000 at step 2" in text
    assert "| punctuation:no_comma | 0/1 | 1/1 |" in text
    assert "````text\n```\n<script>" in text  # generations fenced safely


def test_html_is_self_contained_and_escaped(run_dir):
    _, html_path = render_report(run_dir)
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 3  # metric bars, histogram, loss curve
    assert not re.search(r'src="[^"]+\.png"', html)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>bold</b>" not in html
    assert '<div class="pair">' in html and "<table>" in html


def test_rerender_from_run_folder_alone(run_dir, tmp_path):
    md_path, html_path = render_report(run_dir)
    first = md_path.read_text()
    md_path.unlink()
    html_path.unlink()
    shutil.rmtree(tmp_path / "stages")  # upstream folders gone: run.json and copied PNGs suffice
    md2, html2 = render_report(run_dir)
    assert md2.read_text() == first and html2.exists()
    # The runs root works too: the newest evaluate folder below it is used.
    assert render_report(tmp_path / "runs")[0] == md2


def test_run_file_lists_stage_dirs(run_dir, tmp_path):
    run = json.loads((run_dir / constants.RUN_FILE).read_text())
    assert set(run["stage_dirs"]) == {"ingest", "filter", "train"}
    assert run["train_loss"] == [[1, 3.0], [2, 2.0]]
    assert (run_dir / constants.HISTOGRAM_FILE).exists() and (run_dir / constants.LOSS_CURVE_FILE).exists()


def test_bad_run_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no eval.json"):
        render_report(tmp_path)
    (tmp_path / constants.EVAL_RESULTS_FILE).write_text("[]")
    with pytest.raises(InputError, match="not an evaluation result file"):
        render_report(tmp_path)


def test_inconclusive_gate_reads_as_not_promoted_with_the_items_needed(run_dir):
    results = json.loads((run_dir / constants.EVAL_RESULTS_FILE).read_text())
    base, tuned = results["metrics"]["base"], results["metrics"]["tuned"]
    straddling = {"heldout_loss": {"low": 0.1, "high": 0.9, "n": 3}}  # delta +0.5 vs tolerance 0.6
    results["gate"] = run_gate(base, tuned, GateConfig(max_heldout_loss_increase=0.6), straddling)
    write_json(run_dir / constants.EVAL_RESULTS_FILE, results)
    text = render_report(run_dir)[0].read_text()
    assert "**Verdict: inconclusive, so NOT promoted.**" in text and "`heldout_loss`" in text
    # n needed: the half-width 0.4 must shrink below |0.5 - 0.6| = 0.1, i.e. 16x the 3 rows.
    assert "| inconclusive | 3 | delta &lt;= +0.200 | 48 |" in text
    assert "about 48 items (now 3)" in text
