"""What training must not publish or repeat (issue 17): diverged weights, an extra step after resume,
and deterministic input problems raised as one line that is not retried."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig, load_config
from sft_pipeline.errors import ConfigError, InputError, PipelineError
from sft_pipeline.models import NonFiniteError, check_finite_tensors, load_adapter, load_causal_lm
from sft_pipeline.train import TrainJob, is_transient, train_stage
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

REPO = Path(__file__).resolve().parents[1]
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DIVERGING_LR = 1e30  # finite, accepted by the config, and enough to blow the weights up in one step


@pytest.fixture(scope="module")
def model_cfg(tiny_model_dir):
    return ModelConfig(name_or_path=str(tiny_model_dir))


@pytest.fixture(scope="module")
def tokenized(tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(16), 64), folder / constants.TRAIN_TOKENS_FILE)
    return folder


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"method": "lora", "max_steps": 2, "batch_size": 2, "gradient_accumulation": 1,
                          "learning_rate": 1e-3, "warmup_ratio": 0.0, "save_steps": 2, **kw})


def _one_line_not_retried(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, PipelineError) and not is_transient(err.value)
    return message


@pytest.fixture(scope="module")
def finished(model_cfg, tokenized, tmp_path_factory):
    """A lora run of 2 steps with a checkpoint at step 2 (its last)."""
    out = tmp_path_factory.mktemp("finished")
    return out, train_model(TrainJob(model_cfg, _cfg(), tokenized, out, seed=0))


@pytest.mark.parametrize("override", ["train.learning_rate=.inf", "train.learning_rate=.nan", "train.num_epochs=.inf"])
def test_non_finite_numbers_fail_at_load_time(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: .*finite") as err:
        load_config(REPO / "deployments/configs/tiny.yaml", [override])
    assert "\n" not in str(err.value)


def test_a_diverging_run_fails_with_the_step_and_value_and_publishes_nothing(model_cfg, tokenized, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as err:
        train_model(TrainJob(model_cfg, _cfg(learning_rate=DIVERGING_LR, max_steps=3), tokenized, out, seed=0))
    message = _one_line_not_retried(err)
    assert "is nan at step 2 of 3" in message or "is inf at step 2 of 3" in message, message
    assert not (out / constants.ADAPTER_DIR).exists() and not (out / constants.METRICS_FILE).exists()


def test_non_finite_saved_weights_are_refused_even_when_no_loss_was_logged(model_cfg, tokenized, tmp_path):
    out = tmp_path / "out"
    quiet = _cfg(learning_rate=DIVERGING_LR, max_steps=2, logging_steps=100)  # nothing logged: only the weights tell
    with pytest.raises(NonFiniteError, match=rf"{ADAPTER_WEIGHTS}: tensor .* non-finite value") as err:
        train_model(TrainJob(model_cfg, quiet, tokenized, out, seed=0))
    _one_line_not_retried(err)
    assert not (out / constants.ADAPTER_DIR).exists(), "the NaN adapter is not left behind"


def test_resume_from_the_final_checkpoint_gives_exactly_the_configured_steps(finished, model_cfg, tokenized, tmp_path):
    done, first = finished
    out = tmp_path / "crashed"
    shutil.copytree(done, out)
    shutil.rmtree(out / constants.ADAPTER_DIR)  # what a crash after the last checkpoint, before publishing, leaves
    (out / constants.METRICS_FILE).unlink()

    again = train_model(TrainJob(model_cfg, _cfg(), tokenized, out, seed=0))

    assert first["steps"] == 2 and again["steps"] == 2 and again["resumed_from_step"] == 2
    assert again["final_loss"] == first["final_loss"]
    assert [e["step"] for e in json.loads((out / constants.METRICS_FILE).read_text())["loss"]] == [1, 2]
    before = load_file(done / constants.ADAPTER_DIR / ADAPTER_WEIGHTS)
    after = load_file(out / constants.ADAPTER_DIR / ADAPTER_WEIGHTS)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("make", [lambda tmp: Path("/etc/passwd"), lambda tmp: tmp / "weights.bin"])
def test_a_model_path_that_is_a_file_is_one_line(make, tokenized, tmp_path):
    path = make(tmp_path)
    if not path.exists():
        path.write_bytes(b"\0" * 64)
    cfg = load_config(REPO / "deployments/configs/tiny.yaml", [f"model.name_or_path={path}", "train.method=lora"])
    with pytest.raises(InputError) as err:
        train_stage(cfg, tokenized, tmp_path / "out")
    assert str(path) in _one_line_not_retried(err) and "not a .gguf file" in str(err.value)


def test_an_output_folder_name_over_the_limit_is_one_line(tiny_model_dir, tokenized, tmp_path):
    cfg = load_config(REPO / "deployments/configs/tiny.yaml", [f"model.name_or_path={tiny_model_dir}"])
    with pytest.raises(InputError, match="cannot create the train output folder") as err:
        train_stage(cfg, tokenized, tmp_path / ("x" * 300) / "train")
    assert "x" * 300 in _one_line_not_retried(err)


@pytest.fixture
def adapter_copy(finished, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(finished[0] / constants.ADAPTER_DIR, folder)
    return folder


def test_the_published_adapter_loads_and_is_finite(finished, model_cfg):
    adapter = finished[0] / constants.ADAPTER_DIR
    assert check_finite_tensors(adapter) > 0
    model = load_adapter(load_causal_lm(model_cfg), adapter)
    assert any("lora_B" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("damage, problem", [
    (lambda d: (d / ADAPTER_WEIGHTS).write_bytes((d / ADAPTER_WEIGHTS).read_bytes()[:-100]), "truncated or corrupt"),
    (lambda d: (d / ADAPTER_WEIGHTS).write_bytes((d / ADAPTER_WEIGHTS).read_bytes()[:50]), "truncated or corrupt"),
    (lambda d: (d / "adapter_config.json").write_text('{"r": 16,'), "not valid JSON"),
    (lambda d: (d / ADAPTER_WEIGHTS).unlink(), "no adapter weights"),
])
def test_a_damaged_adapter_is_one_line_input_error(damage, problem, adapter_copy, model_cfg):
    damage(adapter_copy)
    with pytest.raises(InputError) as err:
        load_adapter(load_causal_lm(model_cfg), adapter_copy)
    assert problem in _one_line_not_retried(err) and str(adapter_copy) in str(err.value)


def test_an_adapter_with_nan_weights_is_refused_on_load(adapter_copy, model_cfg):
    weights = load_file(adapter_copy / ADAPTER_WEIGHTS)
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, adapter_copy / ADAPTER_WEIGHTS)
    with pytest.raises(NonFiniteError, match=f"tensor {name} holds") as err:
        load_adapter(load_causal_lm(model_cfg), adapter_copy)
    _one_line_not_retried(err)
