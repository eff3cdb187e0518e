"""Experiment tracking against real stores: TensorBoard event files of a tiny training run, and MLflow
(sqlite tracking store in a temporary folder) for the trainer's curves and the pipeline's run."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig, load_config
from sft_pipeline.errors import ConfigError
from sft_pipeline.tracking import EXPERIMENT_NAME, log_if_possible, log_pipeline_run, read_run
from sft_pipeline.train import TrainJob
from sft_pipeline.train.reporting import TENSORBOARD_DIR
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """A lora run reporting to TensorBoard and MLflow."""
    root = tmp_path_factory.mktemp("tracked")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(16), 64), root / "tok" / constants.TRAIN_TOKENS_FILE)
    cfg = TrainConfig(method="lora", max_steps=STEPS, batch_size=2, gradient_accumulation=1, learning_rate=1e-3,
                      save_steps=STEPS, report_to=["tensorboard", "mlflow"])
    job = TrainJob(ModelConfig(name_or_path=str(tiny_model_dir)), cfg, root / "tok", root / "out", seed=0,
                   tracking_uri=_store(root))
    return job, train_model(job)


def test_training_writes_tensorboard_event_files_in_its_output(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job, result = trained
    events = EventAccumulator(str(job.out_dir / TENSORBOARD_DIR))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, STEPS + 1))
    assert losses[-1].value == pytest.approx(result["final_loss"], rel=1e-5)


def test_training_reports_its_curves_to_mlflow(trained):
    from mlflow.tracking import MlflowClient

    job, result = trained
    client = MlflowClient(job.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert max(history, key=lambda m: m.step).value == pytest.approx(result["final_loss"], rel=1e-5)
    assert float(runs[0].data.params["learning_rate"]) == job.train.learning_rate


def test_mlflow_reporting_needs_a_tracking_store(tiny_model_dir, tmp_path):
    cfg = TrainConfig(method="lora", max_steps=1, report_to=["mlflow"])
    with pytest.raises(ConfigError, match="train.report_to: mlflow needs run.tracking_uri"):
        train_model(TrainJob(ModelConfig(name_or_path=str(tiny_model_dir)), cfg, tmp_path, tmp_path / "out", seed=0))


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "mlruns"])
def test_file_stores_are_refused_at_load_time(uri):
    with pytest.raises(ConfigError, match="run.tracking_uri: .*sqlite:///"):
        load_config(REPO / "deployments/configs/tiny.yaml", [f"run.tracking_uri={uri}"])


def test_one_mlflow_run_per_pipeline_run_holds_params_counts_and_metrics(tmp_path):
    cfg = load_config(REPO / "deployments/configs/tiny.yaml", [f"run.tracking_uri={_store(tmp_path)}",
                                                               "train.lora.r=8"])
    results = {
        "ingest": {"rows_read": 50, "rows_kept": 48, "rows_rejected": 2},
        "train": {"steps": 4, "final_loss": 1.25, "method": "qlora", "mfu": None},
        "evaluate": {"tuned/heldout_loss": 1.5, "delta/ifeval loose": -0.02, "promoted": True},
    }
    first = log_pipeline_run(cfg, results, "run-a")
    second = log_pipeline_run(cfg, {"ingest": {"rows_read": 7}}, "run-b")

    params, metrics, status = read_run(cfg.run.tracking_uri, first)
    assert status == "FINISHED" and first != second
    assert params["train.lora.r"] == "8" and params["train.method"] == "qlora" and params["run.seed"] == "0"
    assert params["ingest.sources"].startswith('[{"') and "tiny_chat.jsonl" in params["ingest.sources"]
    assert len(params) == len(_leaves(cfg.model_dump(mode="json")))
    assert metrics == {"ingest/rows_read": 50.0, "ingest/rows_kept": 48.0, "ingest/rows_rejected": 2.0,
                       "train/steps": 4.0, "train/final_loss": 1.25, "evaluate/tuned/heldout_loss": 1.5,
                       "evaluate/delta/ifeval loose": -0.02, "evaluate/promoted": 1.0}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.run.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert names == ["run-a", "run-b"], "one run per pipeline run, in one experiment"


def test_pipeline_tracking_needs_a_store():
    cfg = load_config(REPO / "deployments/configs/tiny.yaml")
    with pytest.raises(ConfigError, match="run.tracking_uri: not set"):
        log_pipeline_run(cfg, {}, "x")


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder that takes no new file: permission bits, or for root (who ignores them) a folder of sysfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        yield folder
    else:
        yield Path("/sys/fs")
    folder.chmod(0o755)


@pytest.fixture(params=["closed port", "read-only sqlite folder"])
def broken_store(request, monkeypatch):
    # MLflow's own retries (7, for about 4 minutes) would only make the old behaviour slow, not different.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    if request.param == "closed port":
        return f"http://127.0.0.1:{closed_port()}"
    return f"sqlite:///{request.getfixturevalue('read_only_folder')}/mlflow.db"


def test_training_goes_on_without_a_tracker_that_cannot_be_used(broken_store, tiny_model_dir, tiny_tokenizer,
                                                                tmp_path, caplog):
    # It blocked in HTTP retries before the first step, failed, and was retried by Prefect: no adapter after 13 min.
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(8), 64), tmp_path / "tok" / constants.TRAIN_TOKENS_FILE)
    cfg = TrainConfig(method="lora", max_steps=2, batch_size=2, learning_rate=1e-3, save_steps=2,
                      report_to=["tensorboard", "mlflow"])
    job = TrainJob(ModelConfig(name_or_path=str(tiny_model_dir)), cfg, tmp_path / "tok", tmp_path / "out", seed=0,
                   tracking_uri=broken_store)
    with caplog.at_level(logging.WARNING, logger="sft_pipeline"):
        result = train_model(job)
    assert result["steps"] == 2
    assert (job.out_dir / constants.ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert list((job.out_dir / TENSORBOARD_DIR).iterdir()), "TensorBoard still writes"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    warnings = [line for line in warnings if broken_store in line]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0], warnings


def test_a_tracker_that_cannot_be_used_after_the_work_is_a_warning(broken_store, caplog):
    # The finished, all-cached flow waited about 4 minutes and ended Failed with 10 tracebacks.
    cfg = load_config(REPO / "deployments/configs/tiny.yaml", [f"run.tracking_uri={broken_store}"])
    with caplog.at_level(logging.WARNING, logger="sft_pipeline"):
        assert log_if_possible(cfg, {"ingest": {"rows_read": 50}}, "run-a") is None
    assert [r.getMessage() for r in caplog.records][-1].startswith(f"not logged to MLflow at {broken_store}: ")


def test_a_tracker_that_works_is_logged_to(tmp_path):
    cfg = load_config(REPO / "deployments/configs/tiny.yaml", [f"run.tracking_uri={_store(tmp_path)}"])
    run_id = log_if_possible(cfg, {"ingest": {"rows_read": 50}}, "run-a")
    assert read_run(cfg.run.tracking_uri, run_id)[1] == {"ingest/rows_read": 50.0}


def _leaves(tree: dict) -> list:
    """Leaf values of a nested config dump (a non-empty mapping is a branch; anything else a leaf)."""
    out = []
    for value in tree.values():
        out.extend(_leaves(value) if isinstance(value, dict) and value else [value])
    return out
