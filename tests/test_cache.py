"""The cache owner: derived code versions, content-addressed keys, and what it agrees to serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sft_pipeline import artifacts, cache, constants, stages
from sft_pipeline.config import validate_config
from sft_pipeline.stages import StageResult

PACKAGE = Path(artifacts.__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the library's source that the code-version digests read, to edit freely."""
    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    monkeypatch.setattr(artifacts, "_PACKAGE_DIR", copy)
    artifacts.module_closure.cache_clear()
    yield copy
    artifacts.module_closure.cache_clear()


def versions() -> dict[str, str]:
    artifacts.module_closure.cache_clear()
    return {stage.name: stage.code_version for stage in stages.STAGES}


def edit(path: Path) -> None:
    """An edit of the code (a comment or a docstring is no edit of it: see below)."""
    path.write_text(path.read_text() + "\n_EDITED = True\n")


def edit_words(path: Path) -> None:
    """A new comment, and a docstring of the module rewritten, when it has one."""
    text = path.read_text()
    if text.startswith('"""'):
        text = '"""Rewritten: ' + text[3:]
    path.write_text(text + "\n# a new comment\n")


@pytest.mark.parametrize("module, changed", [
    ("report/markdown.py", {constants.STAGE_EVALUATE}),  # the report is rendered by evaluate, and only there
    ("score/signals.py", {constants.STAGE_SCORE}),
    ("tokenize/masks.py", {constants.STAGE_TOKENIZE}),
    ("filter/split.py", {constants.STAGE_FILTER}),
    ("cli.py", set()),  # no stage imports the command line
])
def test_an_edit_changes_the_code_version_of_the_stages_that_import_it(package_copy, module, changed):
    before = versions()
    edit(package_copy / module)
    after = versions()
    assert {name for name in before if before[name] != after[name]} == changed


@pytest.mark.parametrize("module", ["config/evaluate.py", "config/score.py", "config/loader.py", "constants.py",
                                    "errors.py", "urls.py"])
def test_the_config_schema_and_name_modules_are_in_no_code_version(package_copy, module):
    # They were in all seven closures: a new constant for one stage, or a field of EvalConfig, retrained the model.
    # Their effect on a stage reaches its key through the stage's config values.
    before = versions()
    edit(package_copy / module)
    assert versions() == before


def test_comments_and_docstrings_change_no_code_version(package_copy):
    before = versions()
    for path in package_copy.rglob("*.py"):
        edit_words(path)
    assert versions() == before


def test_a_change_to_scores_defaults_recomputes_score_and_not_ingest(package_copy, monkeypatch):
    # In constants.py, a score default changed every stage's code version, hence every key.
    from sft_pipeline.score import defaults

    before = versions()
    path = package_copy / "score" / "defaults.py"
    path.write_text(path.read_text().replace("SIGNAL_TOO_SHORT: 0.5,", "SIGNAL_TOO_SHORT: 0.4,"))
    after = versions()
    assert {name for name in before if before[name] != after[name]} == {constants.STAGE_SCORE}

    source = {"ingest": {"sources": [{"path": "x"}]}}
    ingest, score = stages.get(constants.STAGE_INGEST), stages.get(constants.STAGE_SCORE)
    rows = StageResult(stage=ingest.name, key="i", out_dir="/i", files={constants.CONVERSATIONS_FILE: "d"})
    keys = lambda cfg: (cache.key(ingest, cfg), cache.key(score, cfg, {ingest.name: rows}))  # noqa: E731
    old = keys(validate_config(source))
    monkeypatch.setitem(defaults.DEFAULT_SCORE_WEIGHTS, defaults.SIGNAL_TOO_SHORT, 0.4)  # the default, as loaded
    new = keys(validate_config(source))
    assert new[0] == old[0] and new[1] != old[1]


def test_downstream_keys_follow_upstream_content_not_upstream_keys(tmp_path):
    cfg = validate_config({"run": {"output_dir": str(tmp_path)}, "ingest": {"sources": [{"path": "x"}]}})
    filter_stage = stages.get(constants.STAGE_FILTER)

    def key(score_key: str, digest: str) -> str:
        score = StageResult(stage=constants.STAGE_SCORE, key=score_key, out_dir="/s",
                            files={constants.SCORES_FILE: digest})
        return cache.key(filter_stage, cfg, {constants.STAGE_SCORE: score})

    assert key("new-score-code", "same-rows") == key("old-score-code", "same-rows")
    assert key("old-score-code", "other-rows") != key("old-score-code", "same-rows")


def test_files_named_by_config_enter_keys_by_content(tmp_path):
    template = tmp_path / "template.jinja"
    prompts = tmp_path / "prompts.jsonl"
    template.write_text("{{ messages }}")
    prompts.write_text('{"prompt": "a"}\n')
    cfg = validate_config({"run": {"output_dir": str(tmp_path)}, "ingest": {"sources": [{"path": "x"}]},
                           "model": {"name_or_path": "org/model", "chat_template": str(template)},
                           "eval": {"ifeval_prompts": str(prompts)}})
    filtered = StageResult(stage=constants.STAGE_FILTER, key="f", out_dir="/f", files={constants.FILTERED_FILE: "d"})
    tokenize = lambda: cache.key(  # noqa: E731
        stages.get(constants.STAGE_TOKENIZE), cfg, {constants.STAGE_FILTER: filtered})
    before = tokenize()
    template.write_text("{{ messages | tojson }}")  # same path, new content
    assert tokenize() != before
    named = cache.named_files(stages.get(constants.STAGE_EVALUATE), cfg)
    assert named["eval.ifeval_prompts"] == artifacts.path_digest(prompts)
    assert "model.name_or_path" not in named  # a hub id is a name, not a file


def _evaluate_key(model_dir: str, output_dir: str) -> tuple[str, str]:
    """Run ingest..baseline in a fresh process (as a run would) and return evaluate's key and the adapter config."""
    data = Path(__file__).parent / "data" / "tiny_chat.jsonl"
    cfg = validate_config({"run": {"output_dir": output_dir, "seed": 0}, "model": {"name_or_path": model_dir},
                           "ingest": {"sources": [{"path": str(data)}]},
                           "tokenize": {"max_length": 128, "max_rows": 8},
                           "train": {"max_steps": 2, "batch_size": 2, "save_steps": 2},
                           "eval": {"max_new_tokens": 4, "num_ifeval_prompts": 2, "num_ifbench_prompts": 2,
                                    "num_generation_prompts": 1}})
    results: dict[str, StageResult] = {}
    for stage in stages.upto(constants.STAGE_BASELINE):
        results[stage.name] = cache.run(stage, cfg, {name: results[name] for name in stage.reads})
    adapter_dir = Path(results[constants.STAGE_TRAIN].out_dir) / constants.ADAPTER_DIR
    adapter_config = (adapter_dir / "adapter_config.json").read_text()
    return cache.key(stages.get(constants.STAGE_EVALUATE), cfg, results), adapter_config


def test_identical_runs_give_identical_keys(tiny_model_dir, tmp_path):
    # Two runs of the same config in two places, each in its own process: absolute paths in the adapter and
    # the order of LoRA target modules used to make the evaluate key differ between them.
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # a fresh process per run
        runs = [pool.apply(_evaluate_key, (str(tiny_model_dir), str(tmp_path / place))) for place in "ab"]
    for _, adapter_config in runs:
        assert str(tiny_model_dir) in adapter_config and str(tmp_path) not in adapter_config
    assert runs[0][0] == runs[1][0]


def test_an_input_damaged_past_the_digest_check_fails_in_one_line_and_is_recomputed_next(tmp_path, monkeypatch):
    # A Parquet file over DIGEST_CHECK_BYTES is served on its size alone; damaged inside a page it used to reach
    # the filter as a multi-line pyarrow OSError, retried, and the next run served the same damaged file again.
    from sft_pipeline.config import load_config
    from sft_pipeline.errors import InputError

    monkeypatch.setattr(cache, "DIGEST_CHECK_BYTES", 0)  # every file is "large"
    source = ROOT / "tests" / "data" / "tiny_chat.jsonl"
    cfg = load_config(str(ROOT / "deployments" / "configs" / "tiny.yaml"),
                      [f"run.output_dir={tmp_path}", f"ingest.sources=[{{path: '{source}'}}]"])
    ingest = cache.run(stages.get(constants.STAGE_INGEST), cfg)
    score = cache.run(stages.get(constants.STAGE_SCORE), cfg, {constants.STAGE_INGEST: ingest})
    scores = score.path(constants.SCORES_FILE)
    size = scores.stat().st_size
    with open(scores, "r+b") as fh:  # same size, pages overwritten
        fh.seek(size // 4)
        fh.write(b"\xff" * (size // 2))
    assert cache.complete_output(stages.get(constants.STAGE_SCORE), cfg, score.key) is not None  # served on its size
    with pytest.raises(InputError) as failure:
        cache.run(stages.get(constants.STAGE_FILTER), cfg, {constants.STAGE_SCORE: score})
    message = str(failure.value)
    assert "\n" not in message and str(scores) in message and "the next run recomputes it" in message
    assert cache.complete_output(stages.get(constants.STAGE_SCORE), cfg, score.key) is None
    again = cache.run(stages.get(constants.STAGE_SCORE), cfg, {constants.STAGE_INGEST: ingest})
    assert again.files == score.files
    assert cache.run(stages.get(constants.STAGE_FILTER), cfg, {constants.STAGE_SCORE: again}).counts["rows_kept"] > 0


TINY = ROOT / "deployments" / "configs" / "tiny.yaml"
TINY_DATA = ROOT / "tests" / "data" / "tiny_chat.jsonl"


def test_relative_file_names_without_a_slash_enter_keys_by_content(tmp_path, monkeypatch):
    # `ingest.sources[0].path: data.jsonl` and `model.chat_template: tmpl.jinja`, edited in place, were served
    # Cached: a name without a slash was taken for a word, not a file.
    monkeypatch.chdir(tmp_path)
    Path("data.jsonl").write_text(TINY_DATA.read_text())
    Path("tmpl.jinja").write_text("{{ messages }}")
    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs")},
                           "ingest": {"sources": [{"path": "data.jsonl"}]},
                           "model": {"name_or_path": "org/model", "chat_template": "tmpl.jinja"}})
    filtered = StageResult(stage=constants.STAGE_FILTER, key="f", out_dir="/f", files={constants.FILTERED_FILE: "d"})
    keys = lambda: (cache.key(stages.get(constants.STAGE_INGEST), cfg),  # noqa: E731
                    cache.key(stages.get(constants.STAGE_TOKENIZE), cfg, {constants.STAGE_FILTER: filtered}))
    before = keys()
    Path("data.jsonl").write_text("".join(TINY_DATA.read_text().splitlines(keepends=True)[:20]))
    Path("tmpl.jinja").write_text("{{ messages | tojson }}")
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]


@pytest.mark.parametrize("damage", [[], {"files": []}, {"files": {"conversations.parquet": 5}}, {"counts": "lots"}])
def test_a_manifest_of_another_shape_is_recomputed_and_says_why(damage, tmp_path, caplog):
    # Valid JSON of the wrong shape made every later run fail with a traceback until the folder was deleted.
    import json

    cfg = validate_config({"run": {"output_dir": str(tmp_path)}, "ingest": {"sources": [{"path": str(TINY_DATA)}]}})
    ingest = stages.get(constants.STAGE_INGEST)
    first = cache.run(ingest, cfg)
    manifest = Path(first.out_dir) / constants.MANIFEST_FILE
    damaged = damage if isinstance(damage, list) else {**json.loads(manifest.read_text()), **damage}
    manifest.write_text(json.dumps(damaged))
    assert not cache.is_complete(ingest, cfg)
    again = cache.run(ingest, cfg)
    assert again.files == first.files and again.counts["rows_read"] == first.counts["rows_read"]
    assert any("is incomplete (its manifest is not a manifest" in r.getMessage() for r in caplog.records)
    assert cache.complete_output(ingest, cfg, first.key) is not None


def _killed_writer(final: str) -> None:
    """Build ``final`` through atomic_dir and die half-way, as under kill -9."""
    import os
    import signal

    from sft_pipeline.files import atomic_dir

    with atomic_dir(final) as tmp:
        (tmp / "half.parquet").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)


def _live_writer(final: str, ready, stop) -> None:
    from sft_pipeline.files import atomic_dir

    with atomic_dir(final) as tmp:
        (tmp / "busy").write_text("x")
        ready.set()
        stop.wait(120)


def test_half_built_folders_of_killed_writers_are_removed(tmp_path, caplog):
    # kill -9 during a stage left `<stage>/.<key>.tmp-*` behind for ever.
    import multiprocessing as mp
    import os
    import time

    cfg = validate_config({"run": {"output_dir": str(tmp_path)}, "ingest": {"sources": [{"path": str(TINY_DATA)}]}})
    ingest = stages.get(constants.STAGE_INGEST)
    final = cache.stage_dir(cfg, ingest.name, cache.key(ingest, cfg))
    spawn = mp.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    live = spawn.Process(target=_live_writer, args=(str(final), ready, stop))
    live.start()
    try:
        assert ready.wait(60)
        killed = spawn.Process(target=_killed_writer, args=(str(final),))  # it leaves the live writer's folder be
        killed.start()
        killed.join(60)
        assert killed.exitcode == -9
        legacy_old, legacy_new = (final.parent / f".{final.name}.tmp-{t}" for t in ("0000aaaa", "0000bbbb"))
        for folder in (legacy_old, legacy_new):  # written by code that recorded no holder
            folder.mkdir()
        os.utime(legacy_old, (time.time() - 3 * 24 * 3600,) * 2)
        leftovers = lambda: sorted(p.name for p in final.parent.iterdir() if p.name.startswith("."))  # noqa: E731
        assert len(leftovers()) == 6  # two tmp folders with a holder file each, two without
        result = cache.run(ingest, cfg)
        remaining = leftovers()
        assert legacy_new.name in remaining and legacy_old.name not in remaining
        assert len(remaining) == 3  # the live writer's folder and holder, and the recent legacy folder
        assert any("left half-built: its holder, pid" in r.getMessage() for r in caplog.records)
        assert cache.complete_output(ingest, cfg, result.key) is not None
    finally:
        stop.set()
        live.join(60)
    assert leftovers() == [legacy_new.name]


def test_a_source_that_is_a_folder_but_no_dataset_is_refused_before_hashing():
    # A source of `/` hashed the whole file system for minutes before the "not a datasets folder" line.
    from sft_pipeline.config import load_config
    from sft_pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["ingest.sources=[{path: /}]"])
    assert "ingest.sources.0.path: / is a folder, but not a dataset saved with datasets' save_to_disk" in str(err.value)


def test_hashing_that_takes_long_says_what_it_hashes(tmp_path, monkeypatch, caplog):
    import logging

    (tmp_path / "a").write_text("x" * 1000)
    (tmp_path / "b").write_text("y")
    monkeypatch.setattr(artifacts, "HASH_LOG_AFTER_S", 0.0)
    with caplog.at_level(logging.INFO, logger=artifacts.__name__):
        artifacts.path_digest(tmp_path)
    assert f"hashing {tmp_path} for the cache key: " in caplog.text


def test_what_leaves_a_key_out_is_declared_by_the_stage():
    # It was an `outside_key()` method that cache.py looked for with getattr on each config section.
    from pydantic import BaseModel

    from sft_pipeline import config

    sections = [getattr(config, name) for name in config.__all__]
    assert not [s for s in sections if isinstance(s, type) and issubclass(s, BaseModel) and hasattr(s, "outside_key")]
    train = stages.get(constants.STAGE_TRAIN)
    base = {"ingest": {"sources": [{"path": "x"}]}}
    one = cache.config_part(train, validate_config(base))["train"]
    assert not {"work_pool", "report_to", "progress_steps", "num_processes", "distributed"} & set(one)
    two = cache.config_part(train, validate_config({**base, "train": {"num_processes": 2}}))["train"]
    assert two["num_processes"] == 2 and two["distributed"] == "ddp" and "work_pool" not in two
    assert {"train.work_pool", "train.num_processes"} <= {p for rule in train.outside_key for p in rule.paths}


def test_stage_specific_results_are_details(tmp_path):
    # StageResult carried `verdict` and `method`, which only evaluate and filter have.
    cfg = validate_config({"run": {"output_dir": str(tmp_path)}, "ingest": {"sources": [{"path": str(TINY_DATA)}]}})
    results: dict[str, StageResult] = {}
    for stage in stages.upto(constants.STAGE_FILTER):
        results[stage.name] = cache.run(stage, cfg, results)
    assert not {"verdict", "method"} & set(StageResult.model_fields)
    filtered = results[constants.STAGE_FILTER]
    assert filtered.details["method"] == "threshold" and "method=threshold" in filtered.counts_line()
    again = cache.complete_output(stages.get(constants.STAGE_FILTER), cfg, filtered.key)  # read back from the manifest
    assert again.details == filtered.details and again.counts == filtered.counts
