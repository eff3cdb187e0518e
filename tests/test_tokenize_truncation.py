"""Whole-turn truncation: exact ids and labels, end-of-turn counts, drops, packing and the gate."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trl

from sft_pipeline import constants
from sft_pipeline.config import TokenizeConfig
from sft_pipeline.errors import VerificationError
from sft_pipeline.tokenize.masks import encode_conversation
from sft_pipeline.tokenize.token_files import tokenize_split
from sft_pipeline.tokenize.verify import check_rows, supervised_runs

TEMPLATES_DIR = Path(trl.__file__).parent / "chat_templates"
GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("SFT_UPDATE_GOLDEN") == "1"  # regenerate, then review the "supervised" field
WHOLE = "whole_turns"
IM_END = "<|im_end|>"

LONG_ANSWER = ("Kyoto was the imperial capital for more than a thousand years, from 794 until 1868, when the "
               "court moved to Tokyo; its temples, gardens and wooden townhouses survived the war largely intact.")
MESSAGES = [
    {"role": "system", "content": "You are a concise geography tutor."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is **Paris**. 🇫🇷"},
    {"role": "user", "content": "And of Japan? One word."},
    {"role": "assistant", "content": "Tokyo."},
    {"role": "user", "content": "Tell me about Kyoto."},
    {"role": "assistant", "content": LONG_ANSWER},
]
CUT_INSIDE_LAST = 12  # max_length = full length - this: the window ends inside the third answer
# case -> (TRL template or None for the tiny model's own SmolLM2 ChatML, train_on)
GOLDEN_CASES = {
    "smollm2": (None, "all_assistant"),
    "smollm2_last": (None, "last_assistant"),
    "llama3_1": ("llama3_1", "all_assistant"),
    "glm4moe": ("glm4moe", "all_assistant"),
}
# The text each kept turn's supervised span decodes to, written by hand (content + its end-of-turn marker).
EXPECTED_SUPERVISED = {
    "smollm2": [f"The capital of France is **Paris**. 🇫🇷{IM_END}", f"Tokyo.{IM_END}"],
    "smollm2_last": [f"Tokyo.{IM_END}"],
    # SmolLM2's tokenizer does not know Llama's special tokens: the marker's last token also holds the "<" after it.
    "llama3_1": ["The capital of France is **Paris**. 🇫🇷<|eot_id|><", "Tokyo.<|eot_id|><"],
    "glm4moe": ["The capital of France is **Paris**. 🇫🇷<|user|>", "Tokyo.<|user|>"],
}


def with_template(tokenizer, name: str | None):
    if name is None:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (TEMPLATES_DIR / f"{name}.jinja").read_text()
    return tokenizer


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def supervised_texts(tokenizer, enc: dict) -> list[str]:
    return [decode(tokenizer, enc["input_ids"][a:b]) for a, b in supervised_runs(enc["labels"])]


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_whole_turns(tiny_tokenizer, case):
    template, train_on = GOLDEN_CASES[case]
    tokenizer = with_template(tiny_tokenizer, template)
    full = encode_conversation(MESSAGES, tokenizer, train_on=train_on)
    max_length = len(full["input_ids"]) - CUT_INSIDE_LAST
    enc = encode_conversation(MESSAGES, tokenizer, max_length=max_length, train_on=train_on, truncation=WHOLE)
    assert supervised_texts(tokenizer, enc) == EXPECTED_SUPERVISED[case]
    # The kept tokens are a prefix of the whole conversation's, ending on the second turn's marker.
    n = len(enc["input_ids"])
    assert enc["input_ids"] == full["input_ids"][:n] and n <= max_length
    assert enc["labels"][-1] == enc["input_ids"][-1] != constants.IGNORE_INDEX
    record = {"template": template or "tiny model (SmolLM2 ChatML)", "train_on": train_on, "truncation": WHOLE,
              "max_length": max_length, "supervised": supervised_texts(tokenizer, enc), **enc}
    path = GOLDEN_DIR / f"tokenize_whole_turns_{case}.json"
    if UPDATE_GOLDEN:
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(path.read_text())
    assert max_length == golden["max_length"]
    assert enc["input_ids"] == golden["input_ids"]
    assert enc["labels"] == golden["labels"]


def test_whole_turns_equal_the_shorter_conversation_rendered(tiny_tokenizer):
    """Independent oracle: the cut row is the first four messages rendered, without the newline after <|im_end|>."""
    full = encode_conversation(MESSAGES, tiny_tokenizer)
    enc = encode_conversation(MESSAGES, tiny_tokenizer, max_length=len(full["input_ids"]) - CUT_INSIDE_LAST,
                              truncation=WHOLE)
    short = tiny_tokenizer.apply_chat_template(MESSAGES[:5], tokenize=True)["input_ids"]
    assert decode(tiny_tokenizer, short[-2:]) == f"{IM_END}\n"
    assert enc["input_ids"] == short[:-1]
    assert enc["labels"] == encode_conversation(MESSAGES[:5], tiny_tokenizer)["labels"][:-1]


def test_whole_turns_keeps_everything_that_fits_and_nothing_when_the_first_answer_does_not(tiny_tokenizer):
    full = encode_conversation(MESSAGES, tiny_tokenizer)
    n = len(full["input_ids"])
    assert encode_conversation(MESSAGES, tiny_tokenizer, max_length=n, truncation=WHOLE) == full
    # The window ends exactly on the final <|im_end|>: the trailing newline goes, the last turn stays.
    last = encode_conversation(MESSAGES, tiny_tokenizer, max_length=n - 1, truncation=WHOLE)
    assert len(supervised_runs(last["labels"])) == 3 and last["input_ids"] == full["input_ids"][:-1]
    first_end = supervised_runs(full["labels"])[0][1]
    assert encode_conversation(MESSAGES, tiny_tokenizer, max_length=first_end, truncation=WHOLE)["input_ids"] == \
        full["input_ids"][:first_end]
    empty = encode_conversation(MESSAGES, tiny_tokenizer, max_length=first_end - 1, truncation=WHOLE)
    assert empty == {"input_ids": [], "labels": []}


def test_whole_turns_with_a_prepended_bos(tiny_tokenizer):
    tokenizer = with_template(tiny_tokenizer, "phi3")  # phi3 writes no BOS: we prepend it
    tokenizer.add_bos_token = True
    full = encode_conversation(MESSAGES, tokenizer)
    assert full["input_ids"][0] == tokenizer.bos_token_id
    enc = encode_conversation(MESSAGES, tokenizer, max_length=len(full["input_ids"]) - CUT_INSIDE_LAST,
                              truncation=WHOLE)
    assert supervised_texts(tokenizer, enc)[-1] == "Tokyo.<|end|>"
    assert enc["input_ids"] == full["input_ids"][: len(enc["input_ids"])]


# --- the stage ---------------------------------------------------------------------------------------------

def words(i: int, k: int, n: int) -> str:
    return " ".join(f"w{i}x{k}y{j}" for j in range(n))


def conversation(i: int, answers: list[int]) -> list[dict]:
    """Row ``i`` with one user/assistant pair per entry of ``answers`` (answer lengths in words)."""
    msgs = []
    for k, n in enumerate(answers):
        msgs += [{"role": "user", "content": words(i, 2 * k, 5)},
                 {"role": "assistant", "content": words(i, 2 * k + 1, n)}]
    return msgs


def run(tmp_path, tokenizer, convs, name, **cfg) -> tuple[dict, Path]:
    src = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"id": f"row-{i:03d}", "messages": m} for i, m in enumerate(convs)]), src)
    out = tmp_path / name
    out.mkdir()
    base = {"heldout_fraction": 0.0, "max_length": MAX_LENGTH}
    return tokenize_split(src, out, tokenizer, TokenizeConfig(**{**base, **cfg}), seed=3), out


# Turn ends (tokens, marker included) with the tiny tokenizer: fits 85; shortened 85, 150, 461;
# first_too_long 331, 396; three_kept 85, 150, 215, 526.
STAGE_ROWS = {"fits": [4], "shortened": [4, 4, 40], "first_too_long": [40, 4], "three_kept": [4, 4, 4, 40]}
MAX_LENGTH = 220


@pytest.fixture()
def stage_convs():
    return [conversation(i, answers) for i, answers in enumerate(STAGE_ROWS.values())]


def test_stage_whole_turns_counts_and_drops(tmp_path, tiny_tokenizer, stage_convs):
    assert TokenizeConfig().truncation == WHOLE  # the default
    stats, out = run(tmp_path, tiny_tokenizer, stage_convs, "whole")
    train = pq.read_table(out / constants.TRAIN_TOKENS_FILE).to_pylist()
    dropped = pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    assert [r["id"] for r in train] == ["row-000", "row-001", "row-003"]
    assert dropped == [{"id": "row-002", "split": "train", "reason": "first_assistant_turn_longer_than_max_length"}]
    assert stats["rows_dropped_first_turn_too_long"] == 1 and stats["rows_shortened"] == 2
    assert stats["assistant_turns_dropped"] == 1 + 1 and stats["assistant_turns_kept"] == 1 + 2 + 3
    assert (stats["eot_per_row_min"], stats["eot_per_row_max"], stats["eot_supervised"]) == (1, 3, 6)
    assert stats["eot_per_row_mean"] == 2.0 and stats["pct_rows_ending_in_eot"] == 100.0
    assert stats["rows_without_eot"] == 0
    im_end = tiny_tokenizer.convert_tokens_to_ids(IM_END)
    for row, kept, shortened in zip(train, (1, 2, 3), (False, True, True)):
        assert len(row["input_ids"]) <= MAX_LENGTH
        assert [row["input_ids"][b - 1] for _, b in supervised_runs(row["labels"])] == [im_end] * kept
        # A shortened row ends on its last kept marker; a whole one keeps the template's newline after it.
        assert (row["labels"][-1] == row["input_ids"][-1] == im_end) is shortened
    assert all(isinstance(v, (int, float)) for k, v in stats.items() if k.startswith(("eot_per", "rows_", "pct_")))


def test_stage_keep_start_reports_rows_without_end_of_turn(tmp_path, tiny_tokenizer, stage_convs):
    stats, _ = run(tmp_path, tiny_tokenizer, stage_convs, "keep", truncation="keep_start")
    assert stats["train_rows"] == 4 and stats["rows_shortened"] == 0 and stats["truncated_rows"] == 3
    # row-001 is cut inside its third answer, row-002 inside its first, row-003 inside its fourth user turn.
    assert stats["rows_without_eot"] == 1 and stats["eot_per_row_min"] == 0
    assert stats["eot_supervised"] == 1 + 2 + 0 + 3 and stats["pct_rows_ending_in_eot"] == 50.0


def test_stage_whole_turns_last_assistant_supervises_the_last_kept_turn(tmp_path, tiny_tokenizer, stage_convs):
    stats, out = run(tmp_path, tiny_tokenizer, stage_convs, "last", train_on="last_assistant")
    train = pq.read_table(out / constants.TRAIN_TOKENS_FILE).to_pylist()
    assert stats["eot_per_row_max"] == 1 and stats["eot_per_row_min"] == 1
    for row, conv, kept in zip(train, [stage_convs[i] for i in (0, 1, 3)], (1, 2, 3)):
        (a, b), = supervised_runs(row["labels"])
        answer = [m["content"] for m in conv if m["role"] == "assistant"][kept - 1]
        assert decode(tiny_tokenizer, row["input_ids"][a:b]) == answer + IM_END


def test_stage_whole_turns_with_packing(tmp_path, tiny_tokenizer, stage_convs):
    convs = stage_convs * 5  # ids differ per position
    plain, _ = run(tmp_path, tiny_tokenizer, convs, "plain")
    packed, out = run(tmp_path, tiny_tokenizer, convs, "packed", packing=True)
    assert packed["supervised_tokens"] == plain["supervised_tokens"] and packed["packed_rows"] < packed["train_rows"]
    im_end = tiny_tokenizer.convert_tokens_to_ids(IM_END)
    sequences = 0
    for row in pq.read_table(out / constants.TRAIN_TOKENS_FILE).to_pylist():
        start = 0
        for length in row["seq_lengths"]:  # each packed sequence: its last supervised token is a marker
            labels = row["labels"][start : start + length]
            assert [lab for lab in labels if lab != constants.IGNORE_INDEX][-1] == im_end
            start, sequences = start + length, sequences + 1
    assert sequences == packed["train_rows"] == plain["train_rows"] and packed["eot_per_row_min"] == 1


def test_stage_trains_a_template_that_writes_nothing_after_the_final_turn(tmp_path, tiny_tokenizer, stage_convs):
    tokenizer = with_template(tiny_tokenizer, "glm4moe")
    stats, out = run(tmp_path, tokenizer, stage_convs, "glm")
    assert stats["eot_marker_last"] == "<|user|>" and stats["eot_per_row_min"] >= 1
    assert stats["pct_rows_ending_in_eot"] == 100.0
    row = pq.read_table(out / constants.TRAIN_TOKENS_FILE).to_pylist()[0]  # row-000 fits whole: its final turn too
    assert decode(tokenizer, row["input_ids"]).endswith(stage_convs[0][-1]["content"] + "<|user|>")


def test_gate_requires_an_end_of_turn_under_whole_turns(tiny_tokenizer):
    conv = conversation(1, [6])
    enc = encode_conversation(conv, tiny_tokenizer)
    ids, labels, turns = enc["input_ids"], enc["labels"], [conv[-1]["content"]]
    cut = labels[:-4] + [constants.IGNORE_INDEX] * 4  # the answer's tail and <|im_end|> unsupervised
    assert check_rows([("ok", ids, labels, False, turns), ("cut", ids, cut, True, turns)], tiny_tokenizer,
                      [IM_END]) == [(1, True), (0, False)]
    with pytest.raises(VerificationError, match=r"1 row\(s\): cut \(no supervised end-of-turn token\)"):
        check_rows([("ok", ids, labels, False, turns), ("cut", ids, cut, True, turns)], tiny_tokenizer, [IM_END],
                   require_eot=True)
