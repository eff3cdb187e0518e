"""IFEval checks: lm-eval's checkers on known pass/fail responses, the shipped prompt set, offline NLTK."""

import json
import os
import subprocess
import sys

import pytest

from sft_pipeline.config import EvalConfig
from sft_pipeline.errors import InputError
from sft_pipeline.evaluate.ifeval import aggregate, instruction_registry, load_ifeval_prompts, score_response
from sft_pipeline.resources import resolve_path


def row(inst_id: str, prompt: str = "Answer the question.", **kwargs) -> dict:
    return {"key": 1, "prompt": prompt, "instruction_id_list": [inst_id], "kwargs": [kwargs]}


CASES = [
    # (row, passing response, failing response)
    (row("change_case:english_lowercase"), "this is all lower case text in english.",
     "This Has Capitals In English."),
    (row("punctuation:no_comma"), "No commas here at all.", "One, two, three."),
    (row("detectable_format:number_bullet_lists", num_bullets=2), "* first point\n* second point",
     "* only one point"),
    (row("length_constraints:number_words", num_words=5, relation="less than"), "Just four words here.",
     "This sentence has quite a few more than five words."),
    (row("length_constraints:number_sentences", num_sentences=3, relation="at least"),
     "Dr. Smith arrived. He sat down. Then he left.", "Dr. Smith arrived and sat down."),
    (row("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"),
     "This is VERY VERY important.", "This is very important."),
    (row("detectable_content:postscript", postscript_marker="P.S."), "Hello there.\n\nP.S. See you soon.",
     "Hello there."),
    (row("detectable_format:json_format"), '{"name": "salad", "ingredients": ["lettuce"]}', "name: salad"),
    (row("detectable_format:title"), "<<A Poem>>\nRoses are red.", "A Poem\nRoses are red."),
    (row("startend:end_checker", end_phrase="Any other questions?"), "Here it is. Any other questions?",
     "Any other questions? Here it is."),
    (row("keywords:forbidden_words", forbidden_words=["blue"]), "The sea is grey today.",
     "The sea is blue today."),
    (row("combination:repeat_prompt", prompt_to_repeat="Write a slogan."), "Write a slogan. Fresh bread daily!",
     "Fresh bread daily!"),
    (row("language:response_language", language="fr"),
     "Un ordinateur est une machine qui traite des informations.",
     "A computer is a machine that processes information."),
]


@pytest.mark.parametrize("case, good, bad", CASES, ids=[c[0]["instruction_id_list"][0] for c in CASES])
def test_checker_verdicts(case, good, bad):
    ok, ko = score_response(case, good), score_response(case, bad)
    assert ok["prompt_strict"] and ok["inst_strict"] == [True]
    assert not ko["prompt_strict"] and ko["inst_strict"] == [False]


def test_loose_forgives_markdown_and_a_first_line():
    case = row("detectable_format:title")
    verdict = score_response(case, "Sure, here it is:\n<<Title>>\nText")
    assert verdict["prompt_strict"] is True  # the title may be anywhere
    lower = row("change_case:english_lowercase")
    wrapped = score_response(lower, "Here Is My Answer:\nall lower case text in english here.")
    assert wrapped["prompt_strict"] is False and wrapped["prompt_loose"] is True


def test_aggregate_over_two_instructions():
    case = {"key": 2, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
            "kwargs": [{}, {"keywords": ["apple"]}]}
    verdicts = [score_response(case, "I like apple pie."), score_response(case, "Pears, not apples")]
    assert verdicts[1]["inst_strict"] == [False, True]
    assert aggregate(verdicts) == {"prompt_strict": 0.5, "inst_strict": 0.75, "prompt_loose": 0.5,
                                   "inst_loose": 0.75}


def test_shipped_prompt_set_is_valid_and_varied():
    rows = load_ifeval_prompts(resolve_path(EvalConfig().ifeval_prompts))
    assert 30 <= len(rows) <= 50
    assert len({r["key"] for r in rows}) == len(rows)
    types = {i for r in rows for i in r["instruction_id_list"]}
    assert len(types) >= 20 and types <= set(instruction_registry())
    assert len(load_ifeval_prompts(resolve_path(EvalConfig().ifeval_prompts), limit=5)) == 5


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: invalid JSON"),
    (json.dumps({"key": 1, "prompt": "p"}), "line 2: missing field"),
    (json.dumps(row("no:such_checker")), "line 2: unknown instruction id 'no:such_checker'"),
    (json.dumps(row("punctuation:no_comma", bogus=3)), "line 2: bad kwargs for punctuation:no_comma"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(row("punctuation:no_comma")) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        load_ifeval_prompts(path)
    assert str(path) in str(err.value)


def test_checkers_work_offline_without_download_noise(tmp_path):
    """A fresh process with an empty cache: no nltk download attempt, sentence checks still work."""
    code = ("from sft_pipeline.evaluate.ifeval import score_response; "
            "r = {'key': 1, 'prompt': 'p', 'instruction_id_list': ['length_constraints:number_sentences'], "
            "'kwargs': [{'num_sentences': 2, 'relation': 'at least'}]}; "
            "print(score_response(r, 'Mr. Brown came. He left.')['prompt_strict'])")
    env = {**os.environ, "SFT_PIPELINE_CACHE": str(tmp_path), "NLTK_DATA": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert "nltk_data" not in proc.stdout + proc.stderr and "Downloaded" not in proc.stdout
    assert (tmp_path / "nltk_data").is_dir()
