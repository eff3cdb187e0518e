"""The tokenize stage end to end on small local Parquet files."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline import constants
from sft_pipeline.config import TokenizeConfig
from sft_pipeline.errors import InputError, VerificationError
from sft_pipeline.tokenize.masks import encode_conversation
from sft_pipeline.tokenize.token_files import tokenize_split
from sft_pipeline.tokenize.verify import check_rows

SEED = 7


def words(i: int, k: int, n: int) -> str:
    """Text unique to row i and turn k (no n-gram is shared between rows)."""
    return " ".join(f"w{i}x{k}y{j}" for j in range(n))


def conversation(i: int, turns: int = 2, user_words: int = 6, answer_words: int = 12) -> list[dict]:
    msgs = [{"role": "system", "content": "You are a helpful assistant for this test set."}] if i % 2 else []
    for k in range(turns):
        msgs += [{"role": "user", "content": words(i, 2 * k, user_words)},
                 {"role": "assistant", "content": words(i, 2 * k + 1, answer_words)}]
    return msgs


def write_filtered(path: Path, convs: list[list[dict]], ids: list[str] | None = None) -> Path:
    ids = ids or [f"row-{i:03d}" for i in range(len(convs))]
    table = pa.Table.from_pylist([{"id": r, "messages": m, "score": 0.9} for r, m in zip(ids, convs)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def run(tmp_path: Path, tokenizer, convs, name="out", ids=None, **cfg) -> tuple[dict, Path]:
    src = write_filtered(tmp_path / f"{name}.parquet", convs, ids)
    out = tmp_path / name
    out.mkdir()
    base = {"heldout_fraction": 0.2, "max_heldout_rows": 50, "max_length": 256}
    stats = tokenize_split(src, out, tokenizer, TokenizeConfig(**{**base, **cfg}), seed=SEED)
    return stats, out


def ids_of(out: Path, name: str) -> list[str]:
    table = pq.read_table(out / name)
    column = "ids" if "ids" in table.column_names else "id"
    values = table.column(column).to_pylist()
    return [i for v in values for i in (v if isinstance(v, list) else [v])]


def test_every_row_lands_in_exactly_one_file(tmp_path, tiny_tokenizer):
    convs = [conversation(i, turns=1 + i % 3) for i in range(60)]
    stats, out = run(tmp_path, tiny_tokenizer, convs, max_rows=40)
    train, held = ids_of(out, constants.TRAIN_TOKENS_FILE), ids_of(out, constants.HELDOUT_TOKENS_FILE)
    dropped = pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    everything = train + held + [d["id"] for d in dropped]
    assert sorted(everything) == sorted(f"row-{i:03d}" for i in range(60))
    assert len(train) == stats["train_rows"] == 40 and len(held) == stats["heldout_rows"] > 0
    assert {d["reason"] for d in dropped} == {"not_in_max_rows_subset"}
    assert stats["rows_in"] == 60 and stats["supervised_tokens"] > 0
    assert stats["length_p50"] <= stats["length_p95"] <= stats["length_max"]
    schema = pq.read_schema(out / constants.TRAIN_TOKENS_FILE)
    assert schema.field("input_ids").type == pa.list_(pa.int32()) and schema.field("id").type == pa.string()
    held_table = pq.read_table(out / constants.HELDOUT_TOKENS_FILE)
    assert held_table.column_names == ["id", "messages", "input_ids", "labels"]
    row = held_table.to_pylist()[0]
    assert encode_conversation(row["messages"], tiny_tokenizer, max_length=256) == {
        "input_ids": row["input_ids"], "labels": row["labels"]}
    preview = (out / constants.MASK_PREVIEW_FILE).read_text()
    assert "⟦" in preview and "**train**" in preview and "<|im_end|>⟧" in preview


def test_split_is_deterministic_by_id_and_capped(tmp_path, tiny_tokenizer):
    convs = [conversation(i, turns=1) for i in range(80)]
    _, a = run(tmp_path, tiny_tokenizer, convs, name="a")
    _, b = run(tmp_path, tiny_tokenizer, convs[::-1], name="b", ids=[f"row-{i:03d}" for i in range(80)][::-1])
    assert sorted(ids_of(a, constants.HELDOUT_TOKENS_FILE)) == sorted(ids_of(b, constants.HELDOUT_TOKENS_FILE))
    stats, c = run(tmp_path, tiny_tokenizer, convs, name="c", max_heldout_rows=3)
    assert stats["heldout_rows"] == 3 and stats["train_rows"] == 77
    assert set(ids_of(c, constants.HELDOUT_TOKENS_FILE)) <= set(ids_of(a, constants.HELDOUT_TOKENS_FILE))


def test_heldout_rows_sharing_an_ngram_with_train_are_removed(tmp_path, tiny_tokenizer):
    convs = [conversation(i, turns=1) for i in range(40)]
    _, first = run(tmp_path, tiny_tokenizer, convs, name="first")
    held = ids_of(first, constants.HELDOUT_TOKENS_FILE)
    victim = int(held[0].split("-")[1])
    train_row = int(ids_of(first, constants.TRAIN_TOKENS_FILE)[0].split("-")[1])
    leaked = words(victim, 1, 12).split()[2:10]  # 8 words of the held-out answer
    convs[train_row][-1]["content"] += " " + " ".join(leaked)
    stats, second = run(tmp_path, tiny_tokenizer, convs, name="second", decontaminate_ngram=8)
    assert stats["heldout_decontaminated"] == 1
    assert set(ids_of(second, constants.HELDOUT_TOKENS_FILE)) == set(held) - {held[0]}
    dropped = pq.read_table(second / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    assert dropped == [{"id": held[0], "split": "heldout", "reason": "heldout_ngram_overlap_with_train"}]


def test_truncation_keep_start_and_drop(tmp_path, tiny_tokenizer):
    convs = [conversation(i, turns=1, answer_words=4 + 10 * (i % 4)) for i in range(30)]  # 92 to 290 tokens
    convs.append([{"role": "user", "content": words(99, 0, 200)}, {"role": "assistant", "content": "Fine."}])
    keep, out = run(tmp_path, tiny_tokenizer, convs, name="keep", max_length=128, heldout_fraction=0.0,
                    truncation="keep_start")
    lengths = [len(x) for x in pq.read_table(out / constants.TRAIN_TOKENS_FILE).column("input_ids").to_pylist()]
    assert max(lengths) == 128 and keep["truncated_rows"] == sum(n == 128 for n in lengths) > 0
    assert keep["dropped_no_supervised_tokens"] == 1  # its only answer lies past max_length
    assert keep["pct_truncated_at_max_length"] == pytest.approx(100 * (keep["truncated_rows"] + 1) / 31, abs=0.01)
    drop, out = run(tmp_path, tiny_tokenizer, convs, name="drop", max_length=128, heldout_fraction=0.0,
                    truncation="drop")
    assert drop["truncated_rows"] == 0 and drop["dropped_too_long"] == keep["truncated_rows"] + 1
    assert drop["train_rows"] == 31 - drop["dropped_too_long"]
    reasons = {d["reason"] for d in pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()}
    assert reasons == {"longer_than_max_length"}


def test_packing_keeps_all_supervised_tokens(tmp_path, tiny_tokenizer):
    convs = [conversation(i, turns=1 + i % 2) for i in range(50)]
    plain, _ = run(tmp_path, tiny_tokenizer, convs, name="plain", max_length=512)
    packed, out = run(tmp_path, tiny_tokenizer, convs, name="packed", max_length=512, packing=True)
    table = pq.read_table(out / constants.TRAIN_TOKENS_FILE)
    assert table.column_names == ["ids", "input_ids", "labels", "position_ids", "seq_lengths"]
    assert packed["supervised_tokens"] == plain["supervised_tokens"]
    assert sum(sum(lab != constants.IGNORE_INDEX for lab in row) for row in table.column("labels").to_pylist()) == \
        plain["supervised_tokens"]
    assert packed["packed_rows"] < packed["train_rows"] and 0.5 < packed["packing_efficiency"] <= 1


def test_multiprocess_encoding_matches_single(tmp_path, tiny_tokenizer):
    convs = [conversation(i, turns=1 + i % 3) for i in range(40)]
    run(tmp_path, tiny_tokenizer, convs, name="one", batch_rows=8)
    run(tmp_path, tiny_tokenizer, convs, name="two", batch_rows=8, num_proc=2)
    for name in (constants.TRAIN_TOKENS_FILE, constants.HELDOUT_TOKENS_FILE):
        assert pq.read_table(tmp_path / "one" / name).equals(pq.read_table(tmp_path / "two" / name))


def test_gate_names_rows_whose_mask_cannot_be_built(tmp_path, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    # A template that forgets the end-of-turn marker when an answer mentions BROKEN.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% if 'BROKEN' not in m.content %}<|im_end|>{% endif %}\n{% endfor %}")
    convs = [conversation(i, turns=1) for i in range(10)]
    convs[4][-1]["content"] += " BROKEN"
    with pytest.raises(VerificationError, match=r"1 row\(s\): row-004 \(assistant content"):
        run(tmp_path, tokenizer, convs, heldout_fraction=0.0)
    assert not (tmp_path / "out" / constants.TRAIN_TOKENS_FILE).exists()


def test_gate_rejects_masks_on_prompt_or_missing_end_of_turn(tiny_tokenizer):
    conv = conversation(1, turns=1)
    enc = encode_conversation(conv, tiny_tokenizer)
    ids, labels, turns = enc["input_ids"], enc["labels"], [conv[-1]["content"]]
    check_rows([("ok", ids, labels, False, turns)], tiny_tokenizer, ["<|im_end|>"])
    on_prompt = list(ids)  # trains on everything
    no_eot = labels[:-2] + [constants.IGNORE_INDEX] * 2  # drops <|im_end|> (and the newline after it)
    nothing = [constants.IGNORE_INDEX] * len(ids)
    for bad, why in ((on_prompt, "does not start at its content"), (no_eot, "end-of-turn marker not supervised"),
                     (nothing, "no supervised token")):
        with pytest.raises(VerificationError, match=f"bad-row \\(.*{why}"):
            check_rows([("ok", ids, labels, False, turns), ("bad-row", ids, bad, False, turns)],
                       tiny_tokenizer, ["<|im_end|>"])


def test_gate_passes_multibyte_text(tiny_tokenizer):
    conv = [{"role": "user", "content": "用中文回答"},
            {"role": "assistant", "content": "北京是中国的首都。🇨🇳 東京は日本の首都です。" * 3}]
    enc = encode_conversation(conv, tiny_tokenizer)
    check_rows([("cjk", enc["input_ids"], enc["labels"], False, [conv[-1]["content"]])], tiny_tokenizer,
               ["<|im_end|>"])


def test_bad_input_is_one_clear_line(tmp_path, tiny_tokenizer):
    cfg = TokenizeConfig()
    with pytest.raises(InputError, match="no such file"):
        tokenize_split(tmp_path / "missing.parquet", tmp_path, tiny_tokenizer, cfg, seed=SEED)
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "nocol.parquet")
    with pytest.raises(InputError, match=r"missing column\(s\) \['messages'\]"):
        tokenize_split(tmp_path / "nocol.parquet", tmp_path, tiny_tokenizer, cfg, seed=SEED)
    src = write_filtered(tmp_path / "bad.parquet", [conversation(0, 1), [{"role": "user", "content": "hi"}]])
    with pytest.raises(InputError, match=r"bad.parquet: row 1 \(id='row-001'\): no assistant turn"):
        tokenize_split(src, tmp_path, tiny_tokenizer, cfg, seed=SEED)


def test_stage_runner_writes_manifest_and_caches(tmp_path, tiny_model_dir):
    from sft_pipeline import cache, stages
    from sft_pipeline.artifacts import path_digest, read_manifest
    from sft_pipeline.config import validate_config

    filtered_dir = tmp_path / "filter"
    write_filtered(filtered_dir / constants.FILTERED_FILE, [conversation(i) for i in range(20)])
    upstream = stages.StageResult(stage=constants.STAGE_FILTER, key="k", out_dir=str(filtered_dir),
                                  files={constants.FILTERED_FILE: path_digest(filtered_dir / constants.FILTERED_FILE)})
    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs")}, "ingest": {"sources": [{"path": "x"}]},
                           "model": {"name_or_path": str(tiny_model_dir)}, "tokenize": {"packing": True}})
    result = cache.run(stages.get("tokenize"), cfg, {"filter": upstream})
    manifest = read_manifest(result.out_dir)
    counts = manifest["counts"]
    assert counts["rows_in"] == 20 == counts["train_rows"] + counts["heldout_rows"] + counts["dropped_rows"]
    assert manifest["details"]["eot_marker_last"] == "<|im_end|>" and counts["packing_efficiency"] > 0
    assert result.key == cache.key(stages.get(constants.STAGE_TOKENIZE), cfg, {"filter": upstream})


def test_a_sweeps_heldout_set_is_checked_against_the_rows_handed_over(tmp_path, tiny_model_dir):
    # A sweep hands its shared held-out set's tokenize stage the ids of the rows its branches train on: held-out
    # rows are checked against those rows instead of its own train rows, and the file's content enters the key.
    from sft_pipeline import cache, stages
    from sft_pipeline.artifacts import path_digest
    from sft_pipeline.config import validate_config

    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs")}, "ingest": {"sources": [{"path": "x"}]},
                           "model": {"name_or_path": str(tiny_model_dir)},
                           "tokenize": {"heldout_fraction": 0.2, "decontaminate_ngram": 8}})
    tokenize = stages.get(constants.STAGE_TOKENIZE)

    def given(stage: str, name: str, file: str, table: pa.Table) -> stages.StageResult:
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / file)
        return stages.StageResult(stage=stage, key=name, out_dir=str(tmp_path / name),
                                  files={file: path_digest(tmp_path / name / file)})

    def filtered(name: str, convs) -> stages.StageResult:
        rows = [{"id": f"row-{i:03d}", "messages": m, "score": 0.9} for i, m in enumerate(convs)]
        return given(constants.STAGE_FILTER, name, constants.FILTERED_FILE, pa.Table.from_pylist(rows))

    def train_ids(name: str, ids: list[str]) -> stages.StageResult:
        return given(constants.STAGE_SWEEP_TRAIN_IDS, name, constants.TRAIN_IDS_FILE, pa.table({"id": ids}))

    convs = [conversation(i, turns=1) for i in range(40)]
    first = Path(cache.run(tokenize, cfg, {"filter": filtered("f1", convs)}).out_dir)
    held, train = ids_of(first, constants.HELDOUT_TOKENS_FILE), ids_of(first, constants.TRAIN_TOKENS_FILE)
    convs[int(train[0][4:])][-1]["content"] += " " + " ".join(words(int(held[0][4:]), 1, 12).split()[2:10])
    leaked = filtered("f2", convs)
    own = cache.run(tokenize, cfg, {"filter": leaked})
    others = cache.run(tokenize, cfg, {"filter": leaked, constants.STAGE_SWEEP_TRAIN_IDS: train_ids("a", train[1:])})
    handed = cache.run(tokenize, cfg, {"filter": leaked, constants.STAGE_SWEEP_TRAIN_IDS: train_ids("b", train[:1])})
    assert own.counts["heldout_decontaminated"] == 1 == handed.counts["heldout_decontaminated"]
    assert others.counts["heldout_decontaminated"] == 0
    assert held[0] in ids_of(Path(others.out_dir), constants.HELDOUT_TOKENS_FILE)
    assert held[0] not in ids_of(Path(handed.out_dir), constants.HELDOUT_TOKENS_FILE)
    assert len({own.key, others.key, handed.key}) == 3
    again = cache.run(tokenize, cfg, {"filter": leaked, constants.STAGE_SWEEP_TRAIN_IDS: train_ids("c", train[:1])})
    assert again.key == handed.key  # the same rows under another upstream key: keyed by content
