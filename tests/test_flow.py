"""End to end: the `sft` flow on the tiny config under a real (temporary) Prefect server."""

import errno
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from sft_pipeline import constants, stages

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "deployments" / "configs" / "tiny.yaml")
TINY_DATA = str(ROOT / "tests" / "data" / "tiny_chat.jsonl")


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def overrides(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return [f"run.output_dir={out}", f"model.name_or_path={tiny_model_dir}",
            f"ingest.sources=[{{path: '{TINY_DATA}'}}]"]


def run_flow(overrides, extra=(), until="evaluate"):
    from flows.sft import sft

    state = sft(config=TINY, overrides=list(overrides) + list(extra), until=until, return_state=True)
    assert state.is_completed(), state.message
    return state, state.result()


def task_states(state) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


@pytest.fixture(scope="module")
def first_run(prefect_server, overrides):
    return run_flow(overrides)


def test_full_run_writes_every_output(first_run):
    state, results = first_run
    assert set(results) == set(stages.NAMES)
    assert Path(results["filter"].out_dir, constants.FILTERED_FILE).exists()
    assert Path(results["ingest"].out_dir, constants.REJECTS_FILE).exists()
    assert Path(results["evaluate"].out_dir, constants.REPORT_MD_FILE).exists()
    for name, res in results.items():
        assert Path(res.out_dir, constants.MANIFEST_FILE).exists(), name
    counts = results["ingest"].counts
    assert counts["rows_read"] == counts["rows_accepted"] + counts["rows_rejected"]


def test_training_progress_reaches_the_run_log(first_run):
    # The library's progress lines are INFO records of `sft_pipeline.train.progress`: they must reach the
    # flow run's log (the UI, and the terminal through the same handlers), not stop at the root's WARNING.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    state, _ = first_run
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    progress = [log.message for log in logs if log.message.startswith("step ")]
    assert any(line.startswith("step 4/4 loss ") and "tok/s" in line for line in progress), progress


def test_a_finished_flow_leaves_the_library_logger_as_it_found_it(first_run):
    # Forwarding is scoped to the flow run: after it, no Prefect handler stays on `sft_pipeline` and its
    # level is back (a leak doubled every library record in later tests and logged INFO outside flows).
    import logging

    library = logging.getLogger("sft_pipeline")
    assert library.level == logging.NOTSET and library.handlers == []


def test_adapter_weights_moved_from_initialisation(first_run):
    _, results = first_run
    adapter = Path(results["train"].out_dir, constants.ADAPTER_DIR)
    tensors = load_file(adapter / "adapter_model.safetensors")
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b, "no LoRA B matrices saved"
    # PEFT initialises every B matrix to zero: any non-zero entry was learned.
    assert any(t.abs().sum() > 0 for t in lora_b)


def test_second_run_is_all_cached(first_run, overrides):
    state, results = run_flow(overrides)
    states = task_states(state)
    assert set(states) == set(stages.NAMES)
    assert set(states.values()) == {"Cached"}, states
    assert results["train"].out_dir == first_run[1]["train"].out_dir


def test_threshold_change_recomputes_only_what_changed(first_run, overrides):
    # No tiny-data score falls in [0.65, 0.7): the same rows are kept, so the filtered
    # file has the same content and everything downstream is still a cache hit.
    state, results = run_flow(overrides, ["filter.threshold=0.65"])
    states = task_states(state)
    assert states["ingest"] == states["score"] == "Cached"
    assert states["filter"] == "Completed"
    assert results["filter"].out_dir != first_run[1]["filter"].out_dir
    assert states["tokenize"] == states["train"] == states["baseline"] == states["evaluate"] == "Cached", states


def test_a_training_change_reuses_the_base_models_evaluation(first_run, overrides):
    # The base model is measured by its own stage, keyed by the held-out rows and the evaluation config: a new
    # learning rate trains and evaluates the tuned model again, and the base model's answers are reused.
    state, results = run_flow(overrides, ["train.learning_rate=0.0005"])
    states = task_states(state)
    assert states["tokenize"] == states["baseline"] == "Cached", states
    assert states["train"] == states["evaluate"] == "Completed", states
    assert results["baseline"].key == first_run[1]["baseline"].key
    assert results["evaluate"].counts["heldout_loss_base"] == first_run[1]["evaluate"].counts["heldout_loss_base"]


def test_results_and_cache_records_on_an_fsspec_url(first_run, overrides):
    # run.result_storage as a URL: Prefect's results and cache records go through fsspec
    # (memory:// here, s3:// or gs:// on several machines); a second run hits them.
    import fsspec

    url = ["run.result_storage=memory://sft-test-results"]
    state, _ = run_flow(overrides, url, until="filter")
    assert set(task_states(state).values()) == {"Completed"}  # nothing stored at that URL yet
    assert fsspec.filesystem("memory").ls("/sft-test-results")  # the records landed there
    state, _ = run_flow(overrides, url, until="filter")
    assert set(task_states(state).values()) == {"Cached"}


def test_outputs_on_an_fsspec_url_are_reused_by_another_machine(prefect_server, tiny_model_dir, tmp_path):
    # run.output_dir as a URL: each "machine" has its own working copy (run.local_dir); stage
    # outputs and Prefect's records live at the URL, so machine B reuses what A computed.
    base = [f"run.output_dir={(tmp_path / 'bucket').as_uri()}", f"model.name_or_path={tiny_model_dir}",
            f"ingest.sources=[{{path: '{TINY_DATA}'}}]"]
    state, results = run_flow(base + [f"run.local_dir={tmp_path / 'a'}"], until="filter")
    assert set(task_states(state).values()) == {"Completed"}
    assert results["filter"].url.startswith("file://")
    assert (tmp_path / "bucket" / "filter" / results["filter"].key[:16] / constants.FILTERED_FILE).exists()
    state, _ = run_flow(base + [f"run.local_dir={tmp_path / 'b'}"], until="filter")
    assert set(task_states(state).values()) == {"Cached"}
    state, _ = run_flow(base + [f"run.local_dir={tmp_path / 'b'}", "filter.threshold=0.9"], until="filter")
    states = task_states(state)
    assert states["ingest"] == states["score"] == "Cached" and states["filter"] == "Completed"
    assert (tmp_path / "b" / "score" / results["score"].key[:16] / constants.SCORES_FILE).exists()  # fetched


def _remove_rows(path: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows // 2), path)  # still a valid file, with fewer rows


DAMAGE = {
    "folder deleted": lambda folder: shutil.rmtree(folder),
    "manifest deleted": lambda folder: (folder / constants.MANIFEST_FILE).unlink(),
    "parquet truncated": lambda folder: os.truncate(folder / constants.SCORES_FILE, 100),
    "rows removed": lambda folder: _remove_rows(folder / constants.SCORES_FILE),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_output_is_recomputed_not_served(prefect_server, overrides, tmp_path, damage):
    import pyarrow.parquet as pq

    base = [*overrides, f"run.output_dir={tmp_path}"]
    _, results = run_flow(base, until="filter")
    folder = Path(results["score"].out_dir)
    rows = pq.read_metadata(folder / constants.SCORES_FILE).num_rows
    DAMAGE[damage](folder)
    state, again = run_flow(base, until="filter")
    states = task_states(state)
    assert states["ingest"] == "Cached" and states["score"] == "Completed", states
    assert pq.read_metadata(folder / constants.SCORES_FILE).num_rows == rows
    # The recomputed scores have the same content, so the filter's key and cached output stand.
    assert states["filter"] == "Cached" and again["filter"].key == results["filter"].key



def _fills_the_disk(real, name: str, calls: list):
    """``real``, a write function, failing with a real ENOSPC when the path it is given is named ``name``."""
    def write(*args, **kwargs):
        path = next((a for a in args if isinstance(a, (str, os.PathLike))), "")
        if Path(path).name.lstrip(".").startswith(name):  # write_json writes .metrics.json.tmp-* first
            calls.append(str(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(*args, **kwargs)
    return write


def _published(folder: Path) -> set[str]:
    return {f.name for f in folder.iterdir() if (f / constants.MANIFEST_FILE).is_file()}


@pytest.mark.parametrize("stage, change, owner, writer, name", [
    ("tokenize", "tokenize.max_heldout_rows=7", pq, "write_table", constants.TRAIN_TOKENS_FILE),
    ("train", "train.learning_rate=2e-3", Path, "write_text", constants.METRICS_FILE),  # its own retry predicate
])
def test_a_full_disk_fails_the_stage_once_in_one_line_and_a_rerun_succeeds(
        first_run, overrides, monkeypatch, stage, change, owner, writer, name):
    # ENOSPC was retried twice (evaluate measured the model three times), then up to six tracebacks.
    from flows.sft import sft
    from sft_pipeline.errors import DiskFull

    stage_root = Path(first_run[1][stage].out_dir).parent
    before = _published(stage_root)
    calls: list = []
    monkeypatch.setattr(owner, writer, _fills_the_disk(getattr(owner, writer), name, calls))
    state = sft(config=TINY, overrides=[*overrides, change], until=stage, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DiskFull), repr(error)
    assert len(calls) == 1, f"retried: {calls}"
    message = str(error)
    assert message.startswith(f"{stage}: no space left on the device of {stage_root}/") and " free" in message
    assert "\n" not in message and name in message
    assert not [f for f in stage_root.iterdir() if ".tmp-" in f.name], "a half-built folder was left"
    assert _published(stage_root) == before, "something was published"

    monkeypatch.undo()  # space again
    _, results = run_flow(overrides, [change], until=stage)
    assert (Path(results[stage].out_dir) / name).is_file()
    assert _published(stage_root) == before | {Path(results[stage].out_dir).name}


def test_a_tracker_that_is_down_does_not_fail_a_finished_run(first_run, overrides, monkeypatch):
    # With every stage cached, the flow waited ~4 minutes in MLflow's HTTP retries and ended Failed.
    from test_tracking import closed_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the old code fails fast instead of in minutes
    tracker = f"run.tracking_uri=http://127.0.0.1:{closed_port()}"
    state, _ = run_flow(overrides, [tracker, "train.report_to=[tensorboard, mlflow]"])
    assert set(task_states(state).values()) == {"Cached"}
