"""Two runs writing the same stage key at once never leave a half-written output."""

import multiprocessing as mp
from pathlib import Path

import pandas as pd

from sft_pipeline import constants
from sft_pipeline.artifacts import read_manifest
from sft_pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "deployments" / "configs" / "tiny.yaml"
TINY_DATA = ROOT / "tests" / "data" / "tiny_chat.jsonl"
WRITERS = 4


def _ingest(output_dir: str) -> str:
    from sft_pipeline import cache, stages

    cfg = load_config(TINY, [f"run.output_dir={output_dir}", f"ingest.sources=[{{path: '{TINY_DATA}'}}]"])
    return cache.run(stages.get("ingest"), cfg).out_dir


def test_concurrent_writers_of_one_key_agree(tmp_path):
    with mp.get_context("spawn").Pool(WRITERS) as pool:
        outs = pool.map(_ingest, [str(tmp_path)] * WRITERS)
    assert len(set(outs)) == 1  # same content -> same key -> same folder
    out = Path(outs[0])
    manifest = read_manifest(out)
    rows = len(pd.read_parquet(out / constants.CONVERSATIONS_FILE)) + len(pd.read_parquet(out / constants.REJECTS_FILE))
    assert rows == manifest["counts"]["rows_read"]
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary folders left behind
