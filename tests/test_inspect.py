"""`sft-pipeline inspect`: rows of the tiny run traced through every stage's outputs on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sft_pipeline import cache, cli, constants, stages
from sft_pipeline.config import load_config
from sft_pipeline.errors import InputError
from sft_pipeline.inspection import inspect_row, lineage, open_run, pick
from sft_pipeline.inspection.paint import SGR

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "deployments" / "configs" / "tiny.yaml"
TINY_DATA = ROOT / "tests" / "data" / "tiny_chat.jsonl"
HOSTILE_USER = "Print \x1b[35mpurple\x1b[0m, set \x1b]0;owned\x07 the title, \x1b[2J clear, \u202eevil, \x9b1m, \x00."
HOSTILE_ANSWER = "I show them as text: \x1b[35mpurple\x1b[0m and \x1b]8;;http://x\x07link\x1b]8;;\x07 stay inert here."


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{k}" for k in range(n))


EXTRA_ROWS = [
    {"messages": [{"role": "user", "content": HOSTILE_USER}, {"role": "assistant", "content": HOSTILE_ANSWER}]},
    # A first turn that fits max_length (128) and a second that does not: shortened to the first turn.
    {"messages": [{"role": "user", "content": "Name a colour of the sky."},
                  {"role": "assistant", "content": "The sky is blue on a clear day, and grey under clouds."},
                  {"role": "user", "content": "Now tell me much more."},
                  {"role": "assistant", "content": words("sky", 120)}]},
    # A first assistant turn longer than max_length: tokenize drops it.
    {"messages": [{"role": "user", "content": "Tell me everything about rivers."},
                  {"role": "assistant", "content": words("river", 160)}]},
    "this line is not JSON",
]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """The tiny pipeline through train, run stage by stage through the library (no Prefect)."""
    tmp = tmp_path_factory.mktemp("inspect")
    extra = tmp / "extra.jsonl"
    extra.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in EXTRA_ROWS))
    overrides = [f"run.output_dir={tmp / 'runs'}", f"model.name_or_path={tiny_model_dir}",
                 f"ingest.sources=[{{path: '{TINY_DATA}'}}, {{path: '{extra}'}}]"]
    cfg = load_config(TINY, overrides)
    results: dict = {}
    for stage in lineage.TRACED:
        results[stage] = cache.run(stages.get(stage), cfg, results)
    dirs = {name: Path(r.out_dir) for name, r in results.items()}
    return {"root": tmp / "runs", "dirs": dirs, "overrides": overrides, "extra": extra, "results": results}


def table(run, stage: str, name: str) -> list[dict]:
    return pq.read_table(run["dirs"][stage] / name).to_pylist()


def inspect(run, *args: str) -> tuple[int, str, str]:
    """`sft-pipeline inspect --run ROOT ARGS`, as piped output (stdout is not a terminal)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["inspect", "--run", str(run["root"]), *args])
    return rc, out.getvalue(), err.getvalue()


def extra_id(run, k: int) -> str:
    rows = table(run, constants.STAGE_INGEST, constants.CONVERSATIONS_FILE)
    return next(r["id"] for r in rows if r["source"] == str(run["extra"]) and r["source_row"] == k)


def test_a_kept_row_shows_every_stage_and_its_supervised_text(run):
    row_id = table(run, constants.STAGE_TOKENIZE, constants.TRAIN_TOKENS_FILE)[0]["id"]
    rc, out, _ = inspect(run, row_id[:10])
    assert rc == 0
    origin = next(r for r in table(run, constants.STAGE_INGEST, constants.CONVERSATIONS_FILE) if r["id"] == row_id)
    where = f"{origin['source']}:{origin['source_row']} (line {origin['source_row'] + 1})"
    assert f"row {row_id}" in out and where in out
    assert "accepted" in out and re.search(r"filter +kept \(score [\d.]+ >= threshold 0.7\)", out)
    assert "train (train.parquet row 0)" in out and "kept whole" in out
    assert re.search(r"train +(used|in the training set): 4 steps of 2 rows over \d+ rows", out)
    assert "⟦" in out and "<|im_end|>⟧" in out  # the end-of-turn token closes each supervised span
    assert "\x1b" not in out  # piped: marks, no colour codes


def test_a_row_rejected_at_ingest_is_named_by_its_source_position(run):
    rc, out, _ = inspect(run, "extra.jsonl:3")
    assert rc == 0
    assert "no id: rejected at ingest" in out and "(line 4)" in out
    assert "rejected: invalid_json" in out and "this line is not JSON" in out
    assert "score" not in out.split("stages")[0]  # a reject goes no further


def test_a_row_dropped_by_the_filter(run):
    dropped = table(run, constants.STAGE_FILTER, constants.DROPPED_FILE)[0]
    trace = inspect_row(dropped["id"], run=run["root"])
    assert [f.kept for f in trace.filtered] == [False] * len(trace.filtered) and trace.tokenized.split is None
    assert {name for name, _ in trace.scores[0].fired} == set(dropped["reasons"])
    _, out, _ = inspect(run, dropped["id"])
    assert re.search(r"dropped by threshold \(score [\d.]+ < threshold 0.7\)", out)
    assert "not tokenized (the filter dropped it)" in out and "messages (as ingested):" in out


def test_a_held_out_row(run):
    row_id = table(run, constants.STAGE_TOKENIZE, constants.HELDOUT_TOKENS_FILE)[0]["id"]
    _, out, _ = inspect(run, row_id)
    assert "held out (heldout.parquet" in out and "not trained on (held out)" in out
    assert "as the model sees it (heldout tokens)" in out and "⟦" in out


def test_a_row_shortened_to_whole_turns_says_where(run):
    trace = inspect_row(extra_id(run, 1), run=run["root"])
    enc = trace.tokenized.encoded
    assert trace.tokenized.split == "train" and enc.truncated and (enc.turns, enc.turns_kept) == (2, 1)
    assert trace.tokenized.input_ids == enc.input_ids  # what is stored is what the policy kept
    _, out, _ = inspect(run, extra_id(run, 1))
    assert f"shortened to whole turns: 1 of 2 assistant turns kept ({len(enc.input_ids)} of " \
           f"{enc.full_length} tokens)" in out
    assert "✂ cut after message 1: messages 2-3" in out and "sky0" not in out


def test_a_packed_row_names_its_packed_row_and_sequence(run, tmp_path):
    import shutil

    root = tmp_path / "runs"  # a copy of the run without train, so that the module's run stays the newest there
    for stage in (constants.STAGE_INGEST, constants.STAGE_SCORE, constants.STAGE_FILTER):
        shutil.copytree(run["dirs"][stage], root / stage / run["dirs"][stage].name)
    cfg = load_config(TINY, run["overrides"] + [f"run.output_dir={root}", "tokenize.packing=true"])
    packed = cache.run(stages.get(constants.STAGE_TOKENIZE), cfg, {"filter": run["results"]["filter"]})
    row_id = extra_id(run, 1)
    trace = inspect_row(row_id, run=packed.out_dir)  # a stage folder: the others are linked by their digests
    assert trace.dirs == {**{k: root / k / v.name for k, v in run["dirs"].items() if k != "train"},
                          "tokenize": Path(packed.out_dir)}
    row, seq = trace.tokenized.packed
    assert pq.read_table(Path(packed.out_dir) / constants.TRAIN_TOKENS_FILE).column("ids")[row].as_py()[seq] == row_id
    assert trace.tokenized.input_ids == inspect_row(row_id, run=run["root"]).tokenized.input_ids
    _, out, _ = inspect({"root": root}, row_id)
    assert f"train (train.parquet packed row {row}, sequence {seq + 1})" in out and "no train output" in out


def test_a_decontaminated_row_says_so():
    from sft_pipeline.inspection.paint import Painter
    from sft_pipeline.inspection.render import format_trace
    from sft_pipeline.inspection.trace import Filtered, RowTrace, Tokenized
    from sft_pipeline.tokenize.token_files import DROP_DECONTAMINATED

    trace = RowTrace(query="abcdef", dirs={}, row_id="abcdef", messages=[], filtered=[Filtered(True, None, 0.9)],
                     tokenized=Tokenized(dropped=("heldout", DROP_DECONTAMINATED), config={"decontaminate_ngram": 24}))
    out = format_trace(trace, Painter(False))
    assert "decontaminated: drawn for the held-out set, left out (it shares a 24-word sequence with a train row)" in out
    assert "not trained on" in out


def test_a_row_tokenize_drops_says_why(run):
    _, out, _ = inspect(run, extra_id(run, 2))
    assert re.search(r"dropped \((train|heldout) side\): first_assistant_turn_longer_than_max_length", out)
    assert "max_length 128" in out and "as tokenize encodes it whole (not in the token files)" in out


def test_escape_sequences_in_a_row_are_printed_inert(run):
    rc, out, _ = inspect(run, extra_id(run, 0))
    assert rc == 0 and "⟦" in out
    for raw in ("\x1b", "\x07", "\x00", "\x9b", "\u202e"):
        assert raw not in out
    assert "\\x1b[35mpurple\\x1b[0m" in out and "\\x1b]0;owned\\x07" in out and "\\u202eevil" in out
    rc, coloured, _ = inspect(run, extra_id(run, 0), "--color", "always")
    ours = {f"\x1b[{code}m" for code in SGR.values()} | {"\x1b[0m"}
    assert set(re.findall(r"\x1b\[[0-9;]*m", coloured)) <= ours  # the only escape sequences are our colours
    assert len(re.findall("\x1b", coloured)) == len(re.findall(r"\x1b\[[0-9;]*m", coloured))
    assert "\\x1b[35mpurple" in coloured and "⟦" not in coloured


def test_random_rows_with_a_where_filter_are_drawn_reproducibly(run):
    files = open_run(run["root"])
    dropped = {r["id"] for r in table(run, constants.STAGE_FILTER, constants.DROPPED_FILE)}
    picked = pick(files, 3, ["filter=dropped"], seed=1)
    assert len(picked) == 3 and set(picked) <= dropped and pick(files, 3, ["filter=dropped"], seed=1) == picked
    assert set(pick(files, 5, ["ingest=rejected"])) == {f"{TINY_DATA}:48", f"{run['extra']}:3"}
    assert pick(files, 2, ["tokenize=shortened"]) == [extra_id(run, 1)]
    rc, out, _ = inspect(run, "--random", "2", "--where", "filter=dropped", "--seed", "1")
    assert rc == 0 and out.count("\nrow ") + out.startswith("row ") == 2 and out.count("dropped by threshold") >= 2


def test_the_run_is_found_from_the_config_or_any_of_its_folders(run):
    assert open_run(config=TINY, overrides=run["overrides"]).dirs == run["dirs"]
    assert lineage.from_run_dir(run["dirs"][constants.STAGE_FILTER]) == run["dirs"]  # linked up and down by digests
    assert lineage.from_run_dir(run["root"]) == run["dirs"]


def test_an_evaluate_folders_run_file_names_the_stage_folders(run, tmp_path):
    listed = {**{k: str(v) for k, v in run["dirs"].items()}, "baseline": str(tmp_path)}
    (tmp_path / constants.RUN_FILE).write_text(json.dumps({"stage_dirs": listed}))
    assert lineage.from_run_dir(tmp_path) == run["dirs"]
    listed[constants.STAGE_SCORE] = str(tmp_path / "gone")
    (tmp_path / constants.RUN_FILE).write_text(json.dumps({"stage_dirs": listed}))
    with pytest.raises(InputError, match="its stage folder .*gone is gone"):
        lineage.from_run_dir(tmp_path)


def test_an_unknown_row_or_run_is_one_line(run, tmp_path):
    rc, out, err = inspect(run, "0123456789abcdef")
    assert rc == cli.EXIT_USER_ERROR and out == "" and err.count("\n") == 1 and "no such id" in err
    rc, _, err = inspect(run, "--random", "1", "--where", "filter=maybe")
    assert rc == cli.EXIT_USER_ERROR and "unknown decision (known: kept, dropped)" in err
    rc = cli.main(["inspect", "abcdef", "--run", str(tmp_path / "nowhere")])
    assert rc == cli.EXIT_USER_ERROR


def test_the_console_entry_point_piped_prints_marks_not_colours(run):
    """`sft-pipeline` (flows.cli) in a process of its own, its output through a pipe."""
    import os
    import subprocess
    import sys

    row_id = table(run, constants.STAGE_TOKENIZE, constants.TRAIN_TOKENS_FILE)[0]["id"]
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}  # colours would be allowed
    done = subprocess.run([sys.executable, "-m", "flows.cli", "inspect", row_id, "--run", str(run["root"])],
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "⟦" in done.stdout and "<|im_end|>⟧" in done.stdout and "\x1b" not in done.stdout
