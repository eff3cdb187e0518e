"""Sharded scoring gives exactly the sequential output: in the library, and through Prefect's Dask runner."""

import copy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline import constants
from sft_pipeline.config import IngestConfig, ScoreConfig, SourceConfig
from sft_pipeline.errors import VerificationError
from sft_pipeline.ingest.sources import ingest_sources
from sft_pipeline.score import defaults
from sft_pipeline.score.shards import merge_shards, score_shard, shard_plan
from sft_pipeline.score.passes import score_conversations

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "deployments" / "configs" / "tiny.yaml")
TINY_DATA = ROOT / "tests" / "data" / "tiny_chat.jsonl"
ROW_GROUP = 9


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> Path:
    """tiny_chat plus exact and near duplicates of earlier rows, in row groups of ROW_GROUP rows."""
    out = tmp_path_factory.mktemp("ingest")
    ingest_sources(IngestConfig(sources=[SourceConfig(path=str(TINY_DATA))]), out)
    table = pq.read_table(out / constants.CONVERSATIONS_FILE)
    rows = table.to_pylist()
    near = copy.deepcopy(rows[:12])
    for i, row in enumerate(near):
        row["id"] = f"near-{i}"
        row["messages"][-1]["content"] += " Indeed."
    all_rows = rows + rows[:15] + near  # exact duplicates land in later row groups than their originals
    path = out / "sharded.parquet"
    pq.write_table(pa.Table.from_pylist(all_rows, schema=table.schema), path, row_group_size=ROW_GROUP)
    return path


@pytest.fixture(scope="module")
def sequential(conversations, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential") / constants.SCORES_FILE
    cfg = ScoreConfig(near_duplicate_threshold=0.5, languages=["en"])  # language columns travel too
    return out, score_conversations(conversations, out, cfg), cfg


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7, 100])
def test_any_number_of_shards_gives_the_sequential_output(conversations, sequential, tmp_path, n_shards):
    seq_out, seq_summary, cfg = sequential
    plan = shard_plan(conversations, n_shards)
    groups = pq.ParquetFile(conversations).num_row_groups
    assert [g for shard in plan for g in shard] == list(range(groups))
    assert len(plan) == min(n_shards, groups)
    paths = [score_shard(conversations, shard, tmp_path / f"{i}.npz", cfg)["path"] for i, shard in enumerate(plan)]
    summary = merge_shards(conversations, paths, tmp_path / constants.SCORES_FILE, cfg)
    assert summary == seq_summary
    signals = summary["signals"]
    assert signals[defaults.SIGNAL_EXACT_DUPLICATE] >= 15 and signals[defaults.SIGNAL_NEAR_DUPLICATE] >= 1
    assert pq.read_table(tmp_path / constants.SCORES_FILE).equals(pq.read_table(seq_out))
    assert constants.LANGUAGE_COLUMN in pq.read_schema(seq_out).names


def test_merge_refuses_shards_that_miss_rows(conversations, sequential, tmp_path):
    cfg = sequential[2]
    plan = shard_plan(conversations, 3)
    paths = [score_shard(conversations, shard, tmp_path / f"{i}.npz", cfg)["path"] for i, shard in enumerate(plan)]
    with pytest.raises(VerificationError, match="shards hold"):
        merge_shards(conversations, paths[:-1], tmp_path / constants.SCORES_FILE, cfg)


def test_flow_shards_on_a_local_dask_cluster(conversations, tmp_path):
    """The `sft` flow with run.score_shards=3 on prefect-dask's local cluster equals the plain run."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.sft import sft

    def run(out: Path, shards: int):
        overrides = [f"run.output_dir={out}", f"run.score_shards={shards}", f"ingest.batch_rows={ROW_GROUP}",
                     f"ingest.sources=[{{path: '{TINY_DATA}'}}]"]
        state = sft(config=TINY, overrides=overrides, until="score", return_state=True)
        assert state.is_completed(), state.message
        return state, state.result()

    with prefect_test_harness(server_startup_timeout=120):
        sharded_state, sharded = run(tmp_path / "sharded", 3)
        _, plain = run(tmp_path / "plain", 1)
        shard_runs = task_run_states("score-shard")
        again_state, _ = run(tmp_path / "sharded", 3)
        again = task_run_states("score") + task_run_states("score-shard")
    assert len(shard_runs) == 3 and all(s == "Completed" for s in shard_runs)
    assert sharded["score"].key == plain["score"].key
    sharded_scores = Path(sharded["score"].out_dir, constants.SCORES_FILE)
    assert pq.read_table(sharded_scores).equals(pq.read_table(Path(plain["score"].out_dir, constants.SCORES_FILE)))
    assert pq.ParquetFile(Path(sharded["ingest"].out_dir, constants.CONVERSATIONS_FILE)).num_row_groups >= 3
    assert not list(Path(sharded["score"].out_dir).parent.glob(".*.shards")), "shard scratch left behind"
    # score: sharded and plain runs Completed, the re-run Cached; still only the first run's 3 shard runs
    assert sorted(again) == ["Cached"] + ["Completed"] * 5


def task_run_states(name: str) -> list[str]:
    """States of every task run so far of the task ``name`` (run names are ``<name>-<suffix>``)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [run.state.name for run in client.read_task_runs() if run.name.rsplit("-", 1)[0] == name]
