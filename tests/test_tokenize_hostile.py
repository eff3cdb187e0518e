"""Chat templates and row content that used to stop the tokenize stage with a traceback, or reach its preview raw."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trl

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TokenizeConfig
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.tokenize.token_files import tokenize_split

GEMMA3 = (Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja").read_text()
SYSTEM_REFUSED = "System role not supported"
NOT_ALTERNATING = "Conversation roles must alternate user/assistant/user/assistant/..."
# Renders each assistant answer twice.
TWICE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
         "{% if m.role == 'assistant' %} {{ m.content }}{% endif %}<|im_end|>\n{% endfor %}")


def no_system(template: str) -> str:
    """``template`` raising on a system message, as some model templates do."""
    loop = "{% for message in messages %}"
    assert loop in template
    return template.replace(loop, loop + "{% if message['role'] == 'system' %}{{ raise_exception('"
                            + SYSTEM_REFUSED + "') }}{% endif %}", 1)


@pytest.fixture()
def tok(tiny_tokenizer):
    return copy.deepcopy(tiny_tokenizer)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def conversation(i: int, system: bool = False) -> list[dict]:
    head = [{"role": "system", "content": f"Answer briefly, case {i}."}] if system else []
    return head + [user(f"Question number {i} about rivers?"), assistant(f"Answer number {i}: the Danube.")]


def run(tmp_path: Path, tokenizer, convs, name: str = "out", **cfg) -> tuple[dict, Path]:
    src = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": f"row-{i:03d}", "messages": m} for i, m in enumerate(convs)]), src)
    out = tmp_path / name
    out.mkdir()
    settings = {"heldout_fraction": 0.2, "max_length": 256, **cfg}
    return tokenize_split(src, out, tokenizer, TokenizeConfig(**settings), seed=0), out


def ids_in(out: Path, name: str) -> list[str]:
    return pq.read_table(out / name).column("id").to_pylist()


def test_rows_the_chat_template_refuses_are_rejected_with_its_message(tmp_path, tok):
    tok.chat_template = no_system(tok.chat_template)
    convs = [conversation(i, system=i % 3 == 0) for i in range(20)]
    stats, out = run(tmp_path, tok, convs)
    dropped = pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    refused = sorted(f"row-{i:03d}" for i in range(0, 20, 3))
    assert sorted(d["id"] for d in dropped) == refused
    assert {d["reason"] for d in dropped} == {f"chat_template_refused: {SYSTEM_REFUSED}"}
    assert stats["rows_refused_by_chat_template"] == 7 == stats["dropped_rows"]
    kept = ids_in(out, constants.TRAIN_TOKENS_FILE) + ids_in(out, constants.HELDOUT_TOKENS_FILE)
    assert sorted(kept + refused) == [f"row-{i:03d}" for i in range(20)]  # every row in exactly one place


def test_a_chat_template_that_refuses_every_row_is_one_line_naming_it(tmp_path, tiny_model_dir):
    from sft_pipeline import cache, stages
    from sft_pipeline.artifacts import path_digest
    from sft_pipeline.config import validate_config
    from transformers import AutoTokenizer

    template = tmp_path / "strict.jinja"
    template.write_text(no_system(AutoTokenizer.from_pretrained(tiny_model_dir).chat_template))
    folder = tmp_path / "filter"
    folder.mkdir()
    rows = [{"id": f"row-{i:03d}", "messages": conversation(i, system=True)} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), folder / constants.FILTERED_FILE)
    filtered = stages.StageResult(stage=constants.STAGE_FILTER, key="k", out_dir=str(folder),
                                  files={constants.FILTERED_FILE: path_digest(folder / constants.FILTERED_FILE)})
    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs")}, "ingest": {"sources": [{"path": "x"}]},
                           "model": {"name_or_path": str(tiny_model_dir), "chat_template": str(template)}})
    with pytest.raises(ConfigError) as caught:  # was an IndexError traceback from an empty tokenizer batch
        cache.run(stages.get(constants.STAGE_TOKENIZE), cfg, {constants.STAGE_FILTER: filtered})
    message = str(caught.value)
    assert "\n" not in message and str(template) in message and "refuses every row (12)" in message
    assert SYSTEM_REFUSED in message


def test_gemma3_rejects_rows_whose_roles_do_not_alternate(tmp_path, tok):
    # TRL's gemma3 template (the default model's): roles must alternate, a system prompt is folded into the
    # first user turn.
    tok.chat_template = GEMMA3
    convs = [conversation(i, system=i % 2 == 1) for i in range(16)]
    convs[3] = [user("First question?"), user("Second question?"), assistant("One answer.")]
    convs[8] = conversation(8) + [assistant("A second answer in a row.")]
    convs[12] = [assistant("An answer first.")] + conversation(12)
    stats, out = run(tmp_path, tok, convs, heldout_fraction=0.0)
    dropped = pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    assert [(d["id"], d["reason"]) for d in dropped] == [
        (f"row-{i:03d}", f"chat_template_refused: {NOT_ALTERNATING}") for i in (3, 8, 12)]
    assert stats["train_rows"] == 13 and stats["rows_refused_by_chat_template"] == 3
    assert stats["eot_marker_mid"] == "<end_of_turn>" and stats["rows_without_eot"] == 0
    train = pq.read_table(out / constants.TRAIN_TOKENS_FILE).to_pylist()
    for row in train:
        supervised = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != constants.IGNORE_INDEX]
        text = tok.decode(supervised)
        assert text.startswith("Answer number") and text.rstrip().endswith("<end_of_turn>"), text
        assert "case" not in text  # the folded system prompt is not supervised
    folded = next(r for r in train if r["id"] == "row-001")
    assert "Answer briefly, case 1." in tok.decode(folded["input_ids"])


def test_a_chat_template_that_repeats_each_answer_is_one_line(tmp_path, tok):
    tok.chat_template = TWICE
    with pytest.raises(ConfigError, match="writes message content again after an assistant turn") as caught:
        run(tmp_path, tok, [conversation(i) for i in range(10)])  # was an IndexError traceback, retried
    assert "\n" not in str(caught.value)


def test_a_chat_template_file_that_is_not_text_is_one_line(tmp_path, tiny_model_dir):
    from sft_pipeline.models import load_tokenizer

    png = tmp_path / "template.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(InputError, match=r"template.png: not a text file"):  # was a UnicodeDecodeError traceback
        load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir), chat_template=str(png)))


def test_control_characters_from_rows_are_inert_in_the_mask_preview(tmp_path, tiny_tokenizer):
    hostile = "\x1b]0;owned\x07\x1b[31mred\x1b[0m \x00nul \x08\x7f \r\x9b2J"
    convs = [[user(f"Show {hostile} {i}"), assistant(f"Shown {hostile} {i}")] for i in range(4)]
    _, out = run(tmp_path, tiny_tokenizer, convs, heldout_fraction=0.0, preview_rows=4)
    preview = (out / constants.MASK_PREVIEW_FILE).read_text()
    controls = [c for c in preview if (ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160]
    assert controls == []
    assert "\\x1b]0;owned\\x07\\x1b[31mred" in preview and "\\x00nul" in preview and "\\x9b2J" in preview
