"""Train stage on the CPU with the tiny model: qlora / lora / full, packed rows, outputs, bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import TrainerCallback

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.train import TrainJob
from sft_pipeline.train.samples import labelled_rows, pack_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

MAX_LENGTH = 64
STEPS = 3
# template_tokens off: these tests are about the adapters (tests/test_template_tokens.py trains token rows).
FAST = dict(max_steps=STEPS, batch_size=2, gradient_accumulation=2, learning_rate=1e-3, warmup_ratio=0.0,
            save_steps=STEPS, template_tokens="none")


PROBE = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])


def _is_4bit(param) -> bool:
    return type(param).__name__ == "Params4bit"


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


def _base_logits(model) -> torch.Tensor | None:
    """Logits of the base model alone (adapters disabled); None for a non-PEFT model.

    Runs in training mode: an eval-mode forward makes bitsandbytes repack 4-bit
    weights for its CPU inference kernel, which has no backward.
    """
    if not hasattr(model, "disable_adapter"):
        return None
    was_training = model.training
    model.train()
    with torch.no_grad(), model.disable_adapter():
        logits = model(PROBE.to(model.device)).logits.float().cpu()
    model.train(was_training)
    return logits


class Snapshot(TrainerCallback):
    """Parameters (and which are trainable) at the start and end of training, and base-model logits."""

    def _take(self, model):
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        return params, _base_logits(model), {n for n, p in model.named_parameters() if _is_4bit(p)}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.begin, self.base_begin, self.four_bit = self._take(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end, self.base_end, _ = self._take(model)

    def changed(self, names):
        """Names whose bytes differ (4-bit weights are packed bytes stored as floats, NaN patterns included)."""
        return {n for n in names if not torch.equal(_bytes(self.begin[n]), _bytes(self.end[n]))}

    def base_unchanged(self) -> bool:
        frozen = set(self.begin) - self.trainable
        same_logits = self.base_begin is None or torch.equal(self.base_begin, self.base_end)
        return not self.changed(frozen) and same_logits


@pytest.fixture(scope="module")
def model_cfg(tiny_model_dir):
    return ModelConfig(name_or_path=str(tiny_model_dir))


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    return labelled_rows(tiny_tokenizer, toy_conversations(16), MAX_LENGTH)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(rows, folder / constants.TRAIN_TOKENS_FILE)
    return folder


def _train(model_cfg, tokenized, out, **overrides):
    snap = Snapshot()
    cfg = TrainConfig(**{**FAST, **overrides})
    return train_model(TrainJob(model_cfg, cfg, tokenized, out, seed=0), callbacks=[snap]), snap


@pytest.fixture(scope="module")
def qlora_run(model_cfg, tokenized, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-qlora")
    result, snap = _train(model_cfg, tokenized, out, method="qlora")
    return out, result, snap


@pytest.fixture(scope="module")
def lora_run(model_cfg, tokenized, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-lora")
    result, snap = _train(model_cfg, tokenized, out, method="lora", merge_export=True)
    return out, result, snap


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_adapter_methods_train_adapters_only(method, request):
    out, result, snap = request.getfixturevalue(f"{method}_run")
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.base_unchanged(), "base weights must not move"
    assert snap.changed({n for n in snap.trainable if "lora_B" in n}) == {n for n in snap.trainable if "lora_B" in n}
    assert snap.changed({n for n in snap.trainable if "lora_A" in n})
    assert result["steps"] == STEPS and result["method"] == method
    assert result["resumed_from_step"] is None
    assert bool(snap.four_bit) == (method == "qlora"), "qlora (only) trains on a 4-bit base"
    assert (out / constants.ADAPTER_DIR / "adapter_model.safetensors").is_file()


def test_metrics_and_loss_curve(qlora_run, rows):
    out, result, _ = qlora_run
    metrics = json.loads((out / constants.METRICS_FILE).read_text())
    assert [entry["step"] for entry in metrics["loss"]] == list(range(1, STEPS + 1))
    assert metrics["final_loss"] == metrics["loss"][-1]["loss"] == result["final_loss"]
    supervised = sum(sum(label != constants.IGNORE_INDEX for label in r["labels"]) for r in rows)
    assert metrics["data"]["supervised_tokens"] == supervised
    assert 0 < metrics["supervised_tokens"] <= supervised  # 3 steps x 4 rows of the 16
    shortest = sorted(len(r["input_ids"]) for r in rows)
    assert sum(shortest[: STEPS * 4]) <= metrics["non_pad_tokens"] <= sum(shortest[-STEPS * 4:])
    assert metrics["tokens_per_s"] > 0 and metrics["peak_memory_bytes"] > 0
    assert metrics["peak_memory_kind"] == ("cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss")
    if not torch.cuda.is_available():
        assert metrics["mfu"] is None
    assert metrics["effective_batch"] == 4 and metrics["attempts"][-1]["outcome"] == "ok"
    estimate, parts = metrics["memory_estimate"], ("weights", "gradients", "optimizer", "activations", "loss")
    assert estimate["peak_bytes"] == sum(estimate[f"{part}_bytes"] for part in parts) > 0
    assert metrics["estimated_peak_memory_bytes"] == estimate["peak_bytes"] == result["estimated_peak_memory_bytes"]
    assert estimate["tokens_per_micro_batch"] == FAST["batch_size"] * metrics["data"]["max_row_tokens"]
    assert estimate["weights_bytes"] == sum(group["bytes"] for group in metrics["parameters"])  # planned == built
    assert not estimate["checkpointing_switched_on"] and estimate["free_bytes"] is None  # a CPU: nothing switched
    assert (out / constants.LOSS_CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("steps", "final_loss", "tokens_per_s", "peak_memory_bytes", "supervised_tokens", "resumed_from_step"):
        assert key in result
    json.dumps(result)


def test_autopeft_loads_adapter_with_trained_weights(qlora_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out, _, snap = qlora_run
    model = AutoPeftModelForCausalLM.from_pretrained(out / constants.ADAPTER_DIR)
    loaded = dict(model.named_parameters())
    for name in (n for n in snap.trainable if "lora_B" in n):
        assert torch.allclose(loaded[name].float(), snap.end[name].float().cpu())
    tokenizer = AutoTokenizer.from_pretrained(out / constants.ADAPTER_DIR)
    assert "<|im_start|>" in tokenizer.chat_template


def test_full_finetune_changes_weights_and_keeps_stdout_clean(model_cfg, tokenized, tmp_path, capfd):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    capfd.readouterr()
    result, snap = _train(model_cfg, tokenized, out, method="full")
    assert capfd.readouterr().out == "", "training must not print to stdout"
    assert snap.trainable == set(snap.begin)
    assert len(snap.changed(snap.trainable)) > len(snap.trainable) // 2
    assert result["steps"] == STEPS
    model = AutoModelForCausalLM.from_pretrained(out / constants.ADAPTER_DIR)
    name = next(n for n in snap.changed(snap.trainable) if n in dict(model.named_parameters()))
    assert torch.allclose(dict(model.named_parameters())[name], snap.end[name].cpu())


def test_packed_rows_train_padding_free(model_cfg, rows, tmp_path):
    packed = pack_rows(rows, 3 * MAX_LENGTH)
    assert any(len(r["seq_lengths"]) > 1 for r in packed)
    write_rows(packed, tmp_path / "tok" / constants.TRAIN_TOKENS_FILE)
    result, snap = _train(model_cfg, tmp_path / "tok", tmp_path / "out", method="lora", max_steps=2,
                          batch_size=1, gradient_accumulation=1)
    assert result["steps"] == 2 and snap.changed(snap.trainable)
    metrics = json.loads((tmp_path / "out" / constants.METRICS_FILE).read_text())
    assert metrics["data"]["packed"] is True
    lengths = [len(r["input_ids"]) for r in packed]
    pair_sums = {a + b for i, a in enumerate(lengths) for j, b in enumerate(lengths) if i != j}
    assert metrics["non_pad_tokens"] in pair_sums, "padding-free: two packed rows, no pad tokens"


def test_merge_export_matches_adapter(lora_run):
    from transformers import AutoModelForCausalLM

    out = lora_run[0]
    merge = json.loads((out / constants.METRICS_FILE).read_text())["merge"]
    assert merge["merge_relative_error"] <= merge["max_relative_error"]
    assert merge["adapter_relative_effect"] > merge["merge_relative_error"]
    merged = AutoModelForCausalLM.from_pretrained(out / constants.MERGED_DIR)
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_merge_export_rejected_for_full():
    with pytest.raises(ValueError, match="merge_export applies to lora/qlora only"):
        TrainConfig(method="full", merge_export=True)


def _bad_file(tmp_path, table):
    pq.write_table(table, tmp_path / constants.TRAIN_TOKENS_FILE)
    return tmp_path


@pytest.mark.parametrize(
    "table, message",
    [
        (pa.table({"id": ["a", "b"], "input_ids": [[1, 2], [3, 4]], "labels": [[1, 2], [3]]}),
         r"row 1 \(id b\): input_ids and labels differ in length"),
        (pa.table({"id": ["a"], "input_ids": [[1, 2]]}), r"missing column\(s\) labels"),
        (pa.table({"id": pa.array([], pa.string()), "input_ids": pa.array([], pa.list_(pa.int32())),
                   "labels": pa.array([], pa.list_(pa.int32()))}), "no training rows"),
        (pa.table({"ids": [["a", "b"]], "input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]],
                   "position_ids": [[0, 0, 1]], "seq_lengths": [[1, 1]]}),
         r"row 0 \(ids \['a', 'b'\]\): seq_lengths do not add up"),
    ],
)
def test_bad_tokenized_file_is_one_line_input_error(table, message, model_cfg, tmp_path):
    with pytest.raises(InputError, match=message) as err:
        train_model(TrainJob(model_cfg, TrainConfig(**FAST), _bad_file(tmp_path, table), tmp_path / "out", seed=0))
    assert "\n" not in str(err.value) and constants.TRAIN_TOKENS_FILE in str(err.value)


def test_missing_inputs_and_bad_lora_targets_are_one_line_errors(model_cfg, tokenized, tmp_path):
    with pytest.raises(InputError, match="tokenized training file not found"):
        train_model(TrainJob(model_cfg, TrainConfig(**FAST), tmp_path / "nowhere", tmp_path / "out", seed=0))
    with pytest.raises(InputError, match="no such file or folder"):
        train_model(TrainJob(ModelConfig(name_or_path=str(tmp_path / "no-model")), TrainConfig(**FAST), tokenized,
                             tmp_path / "out", seed=0))
    cfg = TrainConfig(**FAST, method="lora", lora={"target_modules": ["not_a_layer"]})
    with pytest.raises(ConfigError, match="not_a_layer") as err:
        train_model(TrainJob(model_cfg, cfg, tokenized, tmp_path / "out", seed=0))
    assert "\n" not in str(err.value)
