"""Train stage failure policy: OOM back-off keeps the effective batch; transient vs deterministic errors."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError
from transformers import TrainerCallback

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig
from sft_pipeline.errors import ConfigError, InputError, PipelineError
from sft_pipeline.train import TrainJob, is_transient
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


class FailFirstSteps(TrainerCallback):
    """Raise ``error`` at the first ``times`` training steps; record the batch settings seen."""

    def __init__(self, times: int, error: Exception):
        self.left, self.error, self.seen = times, error, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen.append((args.per_device_train_batch_size, args.gradient_accumulation_steps))
        if self.left:
            self.left -= 1
            raise self.error


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(16), 64), folder / constants.TRAIN_TOKENS_FILE)
    return ModelConfig(name_or_path=str(tiny_model_dir)), folder


def _cfg(**kw):
    return TrainConfig(**{"method": "lora", "max_steps": 2, "learning_rate": 1e-3, "save_steps": 10, **kw})


def test_oom_halves_micro_batch_and_doubles_accumulation(setup, tmp_path):
    model_cfg, tokenized = setup
    fail = FailFirstSteps(1, torch.OutOfMemoryError(OOM_MESSAGE))
    job = TrainJob(model_cfg, _cfg(batch_size=4, gradient_accumulation=2), tokenized, tmp_path / "out", seed=0)
    result = train_model(job, callbacks=[fail])
    assert fail.seen[0] == (4, 2) and fail.seen[1] == (2, 4)
    assert (result["micro_batch"], result["gradient_accumulation"]) == (2, 4)
    assert result["steps"] == 2
    metrics = json.loads((tmp_path / "out" / constants.METRICS_FILE).read_text())
    assert [a["outcome"] for a in metrics["attempts"]] == ["oom", "ok"]
    assert metrics["effective_batch"] == 8


def test_oom_at_micro_batch_one_is_a_clear_pipeline_error(setup, tmp_path):
    model_cfg, tokenized = setup
    fail = FailFirstSteps(99, torch.OutOfMemoryError(OOM_MESSAGE))
    with pytest.raises(PipelineError, match=r"out of memory even at micro-batch 1 \(effective batch 2\)") as err:
        train_model(TrainJob(model_cfg, _cfg(batch_size=2, gradient_accumulation=1), tokenized, tmp_path / "out",
                             seed=0), callbacks=[fail])
    assert fail.seen == [(2, 1), (1, 2)]
    assert "\n" not in str(err.value)


def test_one_rank_of_several_leaves_the_back_off_to_the_launcher(setup, tmp_path, monkeypatch):
    from sft_pipeline.train import ranks
    from sft_pipeline.train.failures import RankOutOfMemory

    monkeypatch.setattr(ranks, "world_size", lambda: 2)  # its peers could not follow a smaller micro-batch
    model_cfg, tokenized = setup
    fail = FailFirstSteps(1, torch.OutOfMemoryError(OOM_MESSAGE))
    with pytest.raises(RankOutOfMemory, match="micro-batch 4"):
        train_model(TrainJob(model_cfg, _cfg(batch_size=4), tokenized, tmp_path / "out", seed=0), callbacks=[fail])
    assert fail.seen == [(4, 4)]


def test_other_errors_are_not_retried(setup, tmp_path):
    model_cfg, tokenized = setup
    fail = FailFirstSteps(1, RuntimeError("shape mismatch in layer 3"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_model(TrainJob(model_cfg, _cfg(batch_size=4), tokenized, tmp_path / "out", seed=0), callbacks=[fail])
    assert fail.seen == [(4, 4)]


def _http_error(status: int) -> HfHubHTTPError:
    response = httpx.Response(status, request=httpx.Request("GET", "https://hub.invalid/api/models/x"))
    return HfHubHTTPError(f"HTTP {status}", response=response)


def _wrapped(outer: Exception, cause: Exception) -> Exception:
    try:
        try:
            raise cause
        except Exception as inner:
            raise outer from inner
    except Exception as exc:  # noqa: BLE001
        return exc


@pytest.mark.parametrize(
    "exc, expected",
    [
        (ConnectionResetError("reset by peer"), True),
        (httpx.ConnectTimeout("timed out"), True),
        (_http_error(503), True),
        (_http_error(429), True),
        (_http_error(404), False),
        (_wrapped(OSError("could not load model"), ConnectionError("network is unreachable")), True),
        (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp, unhandled system error"), True),
        (torch.OutOfMemoryError(OOM_MESSAGE), False),
        (InputError("x.parquet: no training rows"), False),
        (ValueError("bad learning rate"), False),
        (FileNotFoundError("model.safetensors"), False),
    ],
)
def test_is_transient(exc, expected):
    assert is_transient(exc) is expected


def test_missing_hub_model_is_deterministic(setup, tmp_path):
    """A hub id that cannot be resolved offline fails at once with one line."""
    _, tokenized = setup
    with pytest.raises(InputError, match="model org/does-not-exist-xyz") as err:
        train_model(TrainJob(ModelConfig(name_or_path="org/does-not-exist-xyz"), _cfg(), tokenized, tmp_path / "out",
                             seed=0))
    assert "\n" not in str(err.value)
    assert not is_transient(err.value)


def test_bad_scheduler_is_a_one_line_config_error(setup, tmp_path):
    model_cfg, tokenized = setup
    with pytest.raises(ConfigError, match="^train: .*not-a-schedule") as err:
        train_model(TrainJob(model_cfg, _cfg(lr_scheduler="not-a-schedule"), tokenized, tmp_path / "out", seed=0))
    assert "\n" not in str(err.value)


def test_process_entry_point_reports_errors_in_one_line(tmp_path, capsys):
    from sft_pipeline.train.launch import main

    code = main(["--config", str(tmp_path / "missing.yaml"), "--tokenized", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "config file not found" in err
