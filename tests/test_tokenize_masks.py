"""Label masks: golden values, every TRL chat template checked by an independent oracle, options."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import trl

from sft_pipeline.constants import IGNORE_INDEX
from sft_pipeline.errors import ConfigError
from sft_pipeline.tokenize.masks import encode_conversation
from sft_pipeline.tokenize.template import learn_template

TEMPLATES_DIR = Path(trl.__file__).parent / "chat_templates"
GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("SFT_UPDATE_GOLDEN") == "1"  # regenerate, then review the "supervised" field

SENTINELS = ("Sentinel reply one", "Sentinel reply two")
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "First question here?"},
    {"role": "assistant", "content": SENTINELS[0]},
    {"role": "user", "content": "Second question here?"},
    {"role": "assistant", "content": SENTINELS[1]},
]

# What closes an assistant turn, written by hand from each template's source (mid turn, final turn).
EOS = "<|im_end|>"  # the tiny tokenizer's eos_token, which Phi-3 templates append at the very end
EXPECTED_EOT = {
    "cohere2": ("<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",) * 2,
    "cohere": ("<|END_OF_TURN_TOKEN|>",) * 2,
    "deepseek": ("<｜end▁of▁sentence｜>",) * 2,
    "diffusion_gemma": ("<turn|>",) * 2,
    "gemma4": ("<turn|>",) * 2,
    "gemma": ("<end_of_turn>",) * 2,
    "glm4moe_training": ("<|user|>",) * 2,
    "glm4moe": ("<|user|>",) * 2,  # nothing after the final turn: we append the mid-turn marker there
    "gptoss": ("<|end|>", "<|return|>"),
    "lfm2": ("<|im_end|>",) * 2,
    "llama3": ("<|eot_id|>",) * 2,
    "muse_glimmer": ("<|eot|>",) * 2,
    "nemotron": ("<|im_end|>",) * 2,
    "phi3": ("<|end|>", "<|end|>\n" + EOS),
    "qwen": ("<|im_end|>",) * 2,
}


# Templates that write nothing after the final assistant turn, and the stop marker appended after it by us.
APPENDED = {"glm4moe": "<|user|>"}


def expected_eot(name: str):
    for prefix in sorted(EXPECTED_EOT, key=len, reverse=True):
        if name.startswith(prefix):
            return EXPECTED_EOT[prefix]
    raise AssertionError(f"no expected end-of-turn marker written for TRL template {name!r}: add one")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    """A private copy whose chat template the tests swap."""
    return copy.deepcopy(tiny_tokenizer)


def with_template(tokenizer, name: str):
    tokenizer.chat_template = (TEMPLATES_DIR / f"{name}.jinja").read_text()
    return tokenizer


def runs(labels: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, lab in enumerate(labels + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        if lab == IGNORE_INDEX and start is not None:
            out.append((start, i))
            start = None
    return out


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def supervised_texts(tokenizer, enc: dict) -> list[str]:
    return [decode(tokenizer, enc["input_ids"][a:b]) for a, b in runs(enc["labels"])]


def renderable(tokenizer, messages):
    """The conversation the template accepts (without system if it refuses one), or a skip reason."""
    for conv in (messages, messages[1:]):
        try:
            text = tokenizer.apply_chat_template(conv, tokenize=False)
        except Exception:  # noqa: BLE001 - templates raise what they like
            continue
        if all(s in text for s in SENTINELS):
            return conv, text
        return None, "renders list-of-parts (vision) content only: plain string contents are dropped"
    return None, "cannot render a user/assistant conversation with string contents"


ALL_TEMPLATES = sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_every_trl_template_supervises_exactly_contents_and_end_of_turn(tok, name):
    tokenizer = with_template(tok, name)
    conv, text = renderable(tokenizer, CONVERSATION)
    if conv is None:
        pytest.skip(f"{name}: {text}")
    expected = expected_eot(name)
    enc = encode_conversation(conv, tokenizer)
    if name in APPENDED:  # the rendering ends right after the final content; our stop marker follows it
        assert text.endswith(SENTINELS[1])
        text += APPENDED[name]
        assert enc["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    else:  # Same tokens as tokenizing the whole rendering once.
        assert enc["input_ids"] == tokenizer.apply_chat_template(conv, tokenize=True)["input_ids"]
    assert all(lab in (IGNORE_INDEX, tok_id) for lab, tok_id in zip(enc["labels"], enc["input_ids"]))
    spans = runs(enc["labels"])
    assert len(spans) == 2, supervised_texts(tokenizer, enc)
    for (a, b), sentinel, marker in zip(spans, SENTINELS, expected):
        want = sentinel + marker
        got = decode(tokenizer, enc["input_ids"][a:b])
        # Exactly the content and marker; a last token straddling the marker's end may carry a few more chars.
        assert got.startswith(want), (got, want)
        assert len(decode(tokenizer, enc["input_ids"][a : b - 1])) < len(want), (got, want)
    if name.endswith("_training"):  # the template's own {% generation %} mask must cover ours
        ref = tokenizer.apply_chat_template(conv, tokenize=True, return_assistant_tokens_mask=True)
        ours = [lab != IGNORE_INDEX for lab in enc["labels"]]
        assert all(m for m, o in zip(ref["assistant_masks"], ours) if o)


def test_earlier_assistant_turns_are_supervised_and_prompts_are_not(tiny_tokenizer):
    enc = encode_conversation(CONVERSATION, tiny_tokenizer)
    assert supervised_texts(tiny_tokenizer, enc) == [f"{s}<|im_end|>" for s in SENTINELS]
    text = decode(tiny_tokenizer, [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE_INDEX])
    assert "question here?" in text and "<|im_start|>assistant\n" in text and "Sentinel" not in text


def test_last_assistant_only(tiny_tokenizer):
    enc = encode_conversation(CONVERSATION, tiny_tokenizer, train_on="last_assistant")
    assert supervised_texts(tiny_tokenizer, enc) == [f"{SENTINELS[1]}<|im_end|>"]


def test_max_length_keeps_the_start(tiny_tokenizer):
    full = encode_conversation(CONVERSATION, tiny_tokenizer)
    cut = encode_conversation(CONVERSATION, tiny_tokenizer, max_length=len(full["input_ids"]) - 3)
    assert cut["input_ids"] == full["input_ids"][:-3] and cut["labels"] == full["labels"][:-3]


def test_identical_answers_and_answer_text_inside_the_prompt(tiny_tokenizer):
    # The second user turn ends with "OK" + end-of-turn too: only the assistant's "OK"s may be supervised.
    conv = [{"role": "user", "content": "Reply with OK"}, {"role": "assistant", "content": "OK"},
            {"role": "user", "content": "again OK"}, {"role": "assistant", "content": "OK"}]
    enc = encode_conversation(conv, tiny_tokenizer)
    assert supervised_texts(tiny_tokenizer, enc) == ["OK<|im_end|>", "OK<|im_end|>"]
    (a1, _), (a2, _) = runs(enc["labels"])
    assert decode(tiny_tokenizer, enc["input_ids"][:a1]).endswith("Reply with OK<|im_end|>\n<|im_start|>assistant\n")
    assert decode(tiny_tokenizer, enc["input_ids"][:a2]).endswith("again OK<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_strips_content(tok):
    tokenizer = with_template(tok, "gemma3")  # renders message['content'] | trim
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Padded answer.  \n"}]
    assert supervised_texts(tokenizer, encode_conversation(conv, tokenizer)) == ["Padded answer.<end_of_turn>"]


def test_qwen3_reasoning_kept_on_last_turn_and_dropped_earlier(tok):
    tokenizer = with_template(tok, "qwen3")
    conv = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>r1</think>A one"},
            {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "<think>r2</think>A two"}]
    got = supervised_texts(tokenizer, encode_conversation(conv, tokenizer))
    assert got == ["A one<|im_end|>", "<think>\nr2\n</think>\n\nA two<|im_end|>"]


def test_bos_added_once(tok):
    tokenizer = with_template(copy.deepcopy(tok), "phi3")  # phi3 writes no BOS
    tokenizer.add_bos_token = True
    enc = encode_conversation(CONVERSATION, tokenizer)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert enc["input_ids"] == [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    assert enc["labels"][0] == IGNORE_INDEX
    llama = with_template(tokenizer, "llama3_1")  # writes {{ bos_token }} itself
    enc = encode_conversation(CONVERSATION, llama)
    assert enc["input_ids"][:2] != [tokenizer.bos_token_id] * 2 and enc["input_ids"][0] == tokenizer.bos_token_id


# Golden masks: exact ids and labels pinned, so a tokenizer/template/library change that moves a mask fails.
GOLDEN_MESSAGES = [
    {"role": "system", "content": "You are a concise geography tutor."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is **Paris**. 🇫🇷"},
    {"role": "user", "content": "And of Japan? One word."},
    {"role": "assistant", "content": "Tokyo."},
]
GOLDEN_CASES = {  # case name -> (TRL template or None for the tiny model's own, train_on)
    "smollm2": (None, "all_assistant"),
    "smollm2_last": (None, "last_assistant"),
    "llama3_1": ("llama3_1", "all_assistant"),
    "gemma3": ("gemma3", "all_assistant"),
    "phi3": ("phi3", "all_assistant"),
    "qwen3": ("qwen3", "all_assistant"),
    "deepseekv3": ("deepseekv3", "all_assistant"),
    "cohere2": ("cohere2", "all_assistant"),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_masks(tiny_tokenizer, tok, case):
    template, train_on = GOLDEN_CASES[case]
    tokenizer = tiny_tokenizer if template is None else with_template(tok, template)
    enc = encode_conversation(GOLDEN_MESSAGES, tokenizer, train_on=train_on)
    record = {"template": template or "tiny model (SmolLM2 ChatML)", "train_on": train_on,
              "supervised": supervised_texts(tokenizer, enc), **enc}
    path = GOLDEN_DIR / f"tokenize_{case}.json"
    if UPDATE_GOLDEN:
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(path.read_text())
    assert record["supervised"] == golden["supervised"]
    assert enc["input_ids"] == golden["input_ids"]
    assert enc["labels"] == golden["labels"]


def test_template_without_any_assistant_content_is_refused(tok):
    tokenizer = with_template(tok, "smolvlm")
    with pytest.raises(ConfigError, match="does not appear in its rendering"):
        learn_template(tokenizer)


def test_template_without_any_end_of_turn_marker_is_refused(tok):
    tokenizer = copy.deepcopy(tok)
    # Nothing but whitespace after any assistant turn: no stop marker to supervise or to append.
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(ConfigError, match="no end-of-turn marker after non-final assistant turns"):
        learn_template(tokenizer)


def test_appended_marker_only_after_a_final_assistant_turn(tok):
    tokenizer = with_template(copy.deepcopy(tok), "glm4moe")
    info = learn_template(tokenizer)
    assert (info.appended, info.mid_marker, info.last_marker) == ("<|user|>",) * 3
    ends_with_user = CONVERSATION[1:4]
    text = tokenizer.apply_chat_template(ends_with_user, tokenize=False)
    assert info.finish(text, ends_with_user) == text
    assert supervised_texts(tokenizer, encode_conversation(ends_with_user, tokenizer)) == [f"{SENTINELS[0]}<|user|>"]
