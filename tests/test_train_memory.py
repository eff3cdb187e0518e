"""What a training run holds in memory, checked on the CPU: parameters, the activation estimate, the fit decision.

* Under QLoRA with bf16 compute (forced here as a GPU would choose it) nothing of the base model is
  upcast to fp32 or left trainable, and our trainer's model has exactly the parameters (names, shapes,
  dtypes, trainable flags) TRL's ``SFTTrainer`` builds from the same checkpoint and ``LoraConfig``.
* The meta-device plan of a model equals the audit of the model really built.
* The activation rules give what autograd saves (``saved_tensors_hooks``), and the whole estimate
  reproduces the two peaks measured on an H200 (bench/gpu/results/2026-11-30-run1/-run3).
* Gradient checkpointing is switched on only on CUDA, when the estimate exceeds the free memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sft_pipeline import constants, models
from sft_pipeline.config import LoraSection, ModelConfig, TrainConfig
from sft_pipeline.train import fitting, memory
from sft_pipeline.train import trainer as train_trainer
from sft_pipeline.train.activations import Architecture, Workload, layer_bytes_per_token
from sft_pipeline.train.data import load_train_data
from sft_pipeline.train.job import Batch, TrainJob
from sft_pipeline.train.levers import Levers
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows

REPO = Path(__file__).resolve().parents[1]
GPU_RESULTS = REPO / "bench" / "gpu" / "results"
MAX_LENGTH = 48
GIB = 2**30
ACTIVATION_RTOL = 0.10  # the rules vs autograd's saved tensors (Llama: within 1 %, Gemma 3: within 7 %)
H200_RTOL = 0.05  # the estimate vs the two measured peaks (within 1.5 % when written)


@pytest.fixture(scope="module")
def tokenized(tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory-tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(8), MAX_LENGTH), folder / constants.TRAIN_TOKENS_FILE)
    return folder


@pytest.fixture
def bf16_compute(monkeypatch):
    """Load models in the compute dtype a bf16-capable GPU gets (``models.compute_dtype``), on this CPU.

    The trainer's own ``bf16`` switch (autocast) stays off: transformers refuses it on a CPU, and it
    does not touch the parameters.
    """
    monkeypatch.setattr(models, "compute_dtype", lambda: torch.bfloat16)
    return torch.bfloat16


def _job(model_dir, tokenized, out, method, **train):
    """A job whose trainable set is the adapters alone (the chat template's token rows off: TRL trains none)."""
    train = {"template_tokens": "none", **train}
    return TrainJob(ModelConfig(name_or_path=str(model_dir)), TrainConfig(method=method, max_steps=1, **train),
                    tokenized, out, seed=0)


def our_model(job):
    """The model our train stage hands to training (after load_model and the trainer's PEFT wrapping)."""
    data = load_train_data(job.train_file)
    tokenizer = models.load_tokenizer(job.model)
    return train_trainer.build_trainer(job, data, tokenizer, job.batch).model


def trl_model(model_dir, tokenized, out, method, dtype):
    """What TRL's SFTTrainer builds from the same checkpoint, LoraConfig and 4-bit settings."""
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    quant = None if method != "qlora" else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype)
    args = SFTConfig(output_dir=str(out), report_to="none", max_steps=1, bf16=False,
                     model_init_kwargs={"dtype": dtype}, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=load_train_data(
        tokenized / constants.TRAIN_TOKENS_FILE).dataset, processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=train_trainer.lora_config(LoraSection()), quantization_config=quant)
    return trainer.model


def _parameters(model) -> dict:
    return {name: (tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters()}


def test_qlora_in_bf16_upcasts_nothing_and_trains_only_the_adapters(tiny_model_dir, tokenized, tmp_path,
                                                                     bf16_compute):
    model = our_model(_job(tiny_model_dir, tokenized, tmp_path, "qlora"))
    groups = memory.audit_parameters(model)
    assert {(g.role, g.dtype) for g in groups} == {("quantized", "bfloat16"), ("frozen", "bfloat16"),
                                                   ("trainable", "bfloat16")}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("method,dtype", [("qlora", torch.bfloat16), ("lora", torch.float32)], ids=["qlora-bf16",
                                                                                                   "lora-cpu"])
def test_our_model_has_the_parameters_trl_builds(method, dtype, tiny_model_dir, tokenized, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "compute_dtype", lambda: dtype)
    ours = _parameters(our_model(_job(tiny_model_dir, tokenized, tmp_path / "ours", method)))
    theirs = _parameters(trl_model(tiny_model_dir, tokenized, tmp_path / "trl", method, dtype))
    assert ours == theirs


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_the_meta_device_plan_equals_the_audit_of_the_built_model(method, tiny_model_dir, tokenized, tmp_path):
    from transformers import AutoConfig

    model = our_model(_job(tiny_model_dir, tokenized, tmp_path, method))
    plan = memory.plan_model(AutoConfig.from_pretrained(tiny_model_dir), method, LoraSection(), torch.float32, "cpu")
    assert plan.parameters == memory.audit_parameters(model)


# ---------------------------------------------------------------- activations


def _small_config(family: str):
    from transformers import Gemma3TextConfig, LlamaConfig

    if family == "llama":
        return LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
    return Gemma3TextConfig(vocab_size=1000, hidden_size=160, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=64, sliding_window=16,
                            layer_types=["full_attention"] * 2)


def _wrapped(config, method: str, dtype: torch.dtype, lora: LoraSection, tmp_path):
    """A small random model as the train stage wraps it (4-bit via a saved checkpoint), with its decoder."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    if method == "qlora":
        AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(tmp_path / "ckpt")
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=dtype, quantization_config=quant,
                                                     device_map={"": "cpu"})
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype if method != "full" else torch.float32)
    if method == "full":
        return model, model.model
    model.requires_grad_(False)
    model = get_peft_model(model, train_trainer.lora_config(lora))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(memory.ADAPTER_DTYPE[method])  # as TRL (qlora) and PEFT (lora) leave them
    return model, model.base_model.model.model


def _saved_bytes(model, decoder, layers: int, ids, mask) -> int:
    """Bytes autograd saves for backward in the first ``layers`` decoder layers (parameters left out)."""
    all_layers, saved = decoder.layers, {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    decoder.layers = all_layers[:layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            decoder(ids, attention_mask=mask)
    finally:
        decoder.layers = all_layers
    return sum(size for ptr, size in saved.items() if ptr not in params)


@pytest.mark.parametrize("family,method,dtype,dropout,padded", [
    ("llama", "lora", torch.float32, 0.05, False),
    ("llama", "lora", torch.float32, 0.0, False),
    ("llama", "qlora", torch.bfloat16, 0.05, True),
    ("llama", "full", torch.float32, 0.0, True),
    ("gemma", "qlora", torch.bfloat16, 0.05, True),
], ids=["llama-lora", "llama-lora-no-dropout", "llama-qlora-bf16-padded", "llama-full", "gemma3-qlora-bf16"])
def test_the_activation_rules_give_what_autograd_saves(family, method, dtype, dropout, padded, tmp_path):
    config, lora, micro, length = _small_config(family), LoraSection(dropout=dropout), 2, 32
    model, decoder = _wrapped(config, method, dtype, lora, tmp_path)
    model.enable_input_require_grads()  # the first layer's input carries a gradient, as in the others
    model.train()
    ids = torch.randint(0, config.vocab_size, (micro, length))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask = mask if padded else None
    measured = (_saved_bytes(model, decoder, 2, ids, mask) - _saved_bytes(model, decoder, 1, ids, mask)) / ids.numel()
    arch = memory.plan_model(config, method, lora, dtype, "cpu").architecture
    adapter = memory.ADAPTER_DTYPE.get(method, torch.float32)
    estimated = layer_bytes_per_token(
        arch, Workload(micro, length, dense_mask=padded), compute_bytes=4 if method == "full" else dtype.itemsize,
        trainable_base=method == "full", lora=lora if method != "full" else None, adapter_bytes=adapter.itemsize)
    assert estimated == pytest.approx(measured, rel=ACTIVATION_RTOL)


def _h200_peak(run: str, variant: str) -> int:
    return json.loads((GPU_RESULTS / f"2026-11-30-{run}.json").read_text())["train_8b"]["results"][variant][
        "peak_memory_bytes"]


@pytest.mark.parametrize("checkpointing,run,variant", [(True, "run1", "trl"), (False, "run3", "trl+nogc")],
                         ids=["checkpointing", "no-checkpointing"])
def test_the_estimate_reproduces_the_peaks_measured_on_an_h200(checkpointing, run, variant, monkeypatch):
    """TRL defaults on the Llama-3-8B shape, QLoRA NF4, micro-batch 4 x 2048 tokens: what our QLoRA now builds too."""
    from transformers import LlamaConfig

    monkeypatch.syspath_prepend(str(REPO / "bench" / "gpu"))
    from random_model import LLAMA3_8B

    plan = memory.plan_model(LlamaConfig(**LLAMA3_8B), "qlora", LoraSection(), torch.bfloat16, "cuda")
    work = Workload(4, 2048, supervised_fraction=0.7, checkpointing=checkpointing, cuda=True)
    estimate = memory.estimate_peak(plan.parameters, plan.architecture, work, method="qlora", compute=torch.bfloat16,
                                    lora=LoraSection())
    assert estimate.peak == pytest.approx(_h200_peak(run, variant), rel=H200_RTOL)


# ---------------------------------------------------------------- the fit decision


def test_checkpointing_is_needed_only_above_the_fit_fraction_of_free_memory():
    free = 80 * GIB
    assert not fitting.needs_checkpointing(int(0.89 * free), free)
    assert fitting.needs_checkpointing(int(0.91 * free), free)
    assert fitting.needs_checkpointing(96 * GIB, free)  # the 8B default before the fix, on an 80 GiB card
    assert not fitting.needs_checkpointing(96 * GIB, 139 * GIB)  # the same on an H200


@pytest.mark.parametrize("cuda,free,auto,already_on,switched", [
    (True, 1, True, False, True),  # would not fit: switched on
    (True, 10**12, True, False, False),  # fits
    (False, 1, True, False, False),  # a CPU: nothing changes
    (True, 1, False, False, False),  # train.auto_checkpointing=false
    (True, 1, True, True, False),  # already on
])
def test_plan_memory_switches_checkpointing_on_only_where_it_would_not_fit(cuda, free, auto, already_on, switched,
                                                                           tiny_model_dir, tokenized, tmp_path):
    job = _job(tiny_model_dir, tokenized, tmp_path, "qlora", auto_checkpointing=auto)
    data = load_train_data(job.train_file)
    plan = fitting.plan_memory(job, data, 2, Levers(gradient_checkpointing=already_on), cuda=cuda, free=free)
    assert plan.switched_on is switched
    assert plan.levers.gradient_checkpointing is (switched or already_on)
    assert plan.estimate.gradient_checkpointing is plan.levers.gradient_checkpointing
    record = plan.record()
    assert record["checkpointing_switched_on"] is switched and record["peak_bytes"] == plan.estimate.peak
    if switched:
        assert record["peak_bytes_without_checkpointing"] > record["peak_bytes"]


def test_a_switched_on_plan_trains_with_checkpointing(tiny_model_dir, tokenized, tmp_path, monkeypatch):
    """build_trainer takes checkpointing from the memory plan, for the trainer's arguments and the model."""
    def switched_on(job, data, micro, levers):
        from dataclasses import replace

        return fitting.MemoryPlan(replace(levers, gradient_checkpointing=True), switched_on=True)

    monkeypatch.setattr(train_trainer, "plan_memory", switched_on)
    job = _job(tiny_model_dir, tokenized, tmp_path, "qlora")
    data = load_train_data(job.train_file)
    trainer = train_trainer.build_trainer(job, data, models.load_tokenizer(job.model), Batch(2, 1))
    assert trainer.args.gradient_checkpointing is True and trainer.memory_plan.switched_on
    assert hasattr(trainer.model.get_base_model(), "_require_grads_hook")  # checkpointed blocks get a gradient input


def test_a_model_that_cannot_be_planned_still_trains_without_an_estimate(tmp_path, tokenized, caplog):
    folder = tmp_path / "odd-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    job = TrainJob(ModelConfig(name_or_path=str(folder)), TrainConfig(), tokenized, tmp_path / "out", seed=0)
    plan = fitting.plan_memory(job, load_train_data(job.train_file), 2, Levers(), cuda=False)
    assert plan.estimate is None and plan.record() is None and plan.levers == Levers()
    assert any("no memory estimate" in r.getMessage() for r in caplog.records)


def test_architecture_reads_norms_and_lora_inputs_of_a_gemma3_layer():
    plan = memory.plan_model(_small_config("gemma"), "qlora", LoraSection(), torch.bfloat16, "cuda")
    arch = plan.architecture
    assert isinstance(arch, Architecture) and (arch.q_dim, arch.kv_dim) == (256, 64)
    assert sorted(arch.norm_widths) == [64, 160, 160, 160, 160, 256]  # 4 layer norms, k_norm and q_norm per head
    assert dict(arch.lora_inputs) == {"q_proj": 160, "k_proj": 160, "v_proj": 160, "o_proj": 256, "gate_proj": 160,
                                      "up_proj": 160, "down_proj": 512}

