"""The two sides of ``bench/bench_train.py``, each run in its own process, and the held-out loss.

* :func:`run_ours`: ``sft_pipeline.train.trainer.train_model`` on the pre-tokenized rows (packed or not), with
  the variant's speed levers;
* :func:`run_trl`: TRL ``SFTTrainer`` with its defaults on the raw conversations.

Both record (step, time, cumulative tokens) at every log (:func:`step_clock`) for the steady-state rate,
and the estimated peak memory (``sft_pipeline.train.memory``) beside the measured one: ours from its
``metrics.json``, TRL's by the same estimate applied to the model its ``SFTTrainer`` built.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_DROPOUT = 0.05


def step_clock():
    """A callback that records (step, time, cumulative tokens) at each log, CUDA synchronised."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        marks: list = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.marks.append((state.global_step, time.perf_counter(), float(logs["num_tokens"])))

    return StepClock()


def steady_rate(marks: list, warmup: int) -> tuple[float | None, int]:
    """Tokens/s between the log of step ``warmup`` and the last one, and how many steps that covers.

    >>> steady_rate([(1, 0.0, 10), (2, 1.0, 20), (3, 2.0, 40), (4, 3.0, 60)], 2)
    (20.0, 2)
    >>> steady_rate([(1, 0.0, 10)], 2)
    (None, 0)
    """
    start = next((i for i, m in enumerate(marks) if m[0] >= warmup), None)
    if start is None or start == len(marks) - 1:
        return None, 0
    (s0, t0, n0), (s1, t1, n1) = marks[start], marks[-1]
    return (n1 - n0) / (t1 - t0), s1 - s0


def peak_memory() -> tuple[int, str]:
    from sft_pipeline.train.metrics import peak_memory as measure

    return measure()


def ours_config(spec: dict):
    from sft_pipeline.config import TrainConfig

    opts = set(spec["options"])
    return TrainConfig(
        method=spec["method"], max_steps=spec["steps"], batch_size=spec["batch"], gradient_accumulation=spec["accum"],
        learning_rate=spec["lr"], save_steps=spec["steps"], lora={"r": spec["r"], "alpha": spec["alpha"]},
        gradient_checkpointing="gc" in opts, liger_kernels="liger" in opts,
        attn_implementation="flex_attention" if "flex" in opts else "sdpa", padding_free="on" if "pf" in opts else "auto",
    )


def run_ours(spec: dict) -> dict:
    from sft_pipeline.config import ModelConfig
    from sft_pipeline.train import TrainJob
    from sft_pipeline.train.trainer import train_model

    started = time.perf_counter()
    out, clock = Path(spec["out"]), step_clock()
    tokenized = Path(spec["work"]) / ("tokenized-packed" if "packed" in spec["options"] else "tokenized")
    job = TrainJob(ModelConfig(name_or_path=spec["model"]), ours_config(spec), tokenized, out, seed=0)
    counts = train_model(job, callbacks=[clock])
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "tokens": metrics["non_pad_tokens"], "runtime_s": metrics["train_runtime_s"],
        "setup_s": time.perf_counter() - started - metrics["train_runtime_s"],
        "peak_memory_bytes": metrics["peak_memory_bytes"], "memory_kind": metrics["peak_memory_kind"],
        "final_train_loss": counts["final_loss"], "adapter": str(out / "adapter"), "marks": clock.marks,
        "attempts": metrics["attempts"], "memory_estimate": metrics["memory_estimate"],
        "audited_weights_bytes": sum(group["bytes"] for group in metrics["parameters"]),
    }


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from sft_pipeline.models import compute_dtype
    from sft_pipeline.train.samples import CHATML_TRAINING_TEMPLATE

    started, opts, clock = time.perf_counter(), set(spec["options"]), step_clock()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
    conversations = json.loads((Path(spec["work"]) / "train_conversations.json").read_text())
    dataset = Dataset.from_list([{"messages": m} for m in conversations])
    bf16 = compute_dtype() == torch.bfloat16
    overrides = {"gradient_checkpointing": "gc" in opts} if opts & {"gc", "nogc"} else {}
    args = SFTConfig(
        output_dir=str(Path(spec["out"]) / "checkpoints"), max_length=spec["max_length"], assistant_only_loss=True,
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=spec["accum"],
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=0.1,
        bf16=bf16, seed=0, report_to="none", disable_tqdm=True, logging_steps=1,  # to read its token count
        packing="packed" in opts, **overrides,
    )
    quant = None
    if spec["method"] == "qlora":
        dtype = compute_dtype()
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
        args.model_init_kwargs = {"dtype": dtype}
    peft = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=LORA_DROPOUT, task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS)
    trainer = SFTTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft, quantization_config=quant, callbacks=[clock])
    estimate = trl_memory_estimate(trainer, spec, packed="packed" in opts)
    output = trainer.train()
    memory, kind = peak_memory()
    adapter = Path(spec["out"]) / "adapter"
    trainer.save_model(str(adapter))
    logs = [entry for entry in trainer.state.log_history if "num_tokens" in entry]
    runtime = output.metrics["train_runtime"]
    return {
        "tokens": int(logs[-1]["num_tokens"]), "runtime_s": runtime,
        "setup_s": time.perf_counter() - started - runtime, "peak_memory_bytes": memory, "memory_kind": kind,
        "final_train_loss": [e["loss"] for e in trainer.state.log_history if "loss" in e][-1],
        "adapter": str(adapter), "marks": clock.marks, **estimate,
    }


def trl_memory_estimate(trainer, spec: dict, *, packed: bool) -> dict:
    """Our peak-memory estimate for the run TRL's trainer is set up for, and the audit of the model it built."""
    import torch
    from transformers import AutoConfig

    from sft_pipeline.config import LoraSection
    from sft_pipeline.models import compute_dtype
    from sft_pipeline.train.activations import Workload
    from sft_pipeline.train.memory import audit_parameters, estimate_peak, plan_model

    cuda = torch.cuda.is_available()
    dtype = compute_dtype() if spec["method"] == "qlora" else torch.float32  # TRL's default dtype
    lora = LoraSection(r=spec["r"], alpha=spec["alpha"], dropout=LORA_DROPOUT, target_modules=LORA_TARGETS)
    plan = plan_model(AutoConfig.from_pretrained(spec["model"]), spec["method"], lora, dtype, "cuda" if cuda else "cpu")
    work = Workload(spec["batch"], spec["max_length"] if packed else spec["max_row_tokens"],
                    spec["supervised_fraction"], checkpointing=bool(trainer.args.gradient_checkpointing), cuda=cuda)
    estimate = estimate_peak(plan.parameters, plan.architecture, work, method=spec["method"], compute=dtype, lora=lora)
    return {"memory_estimate": estimate.as_dict(),
            "audited_weights_bytes": sum(g.bytes for g in audit_parameters(trainer.model))}


# ---------------------------------------------------------------- held-out loss (same code for both)


def heldout_loss(base: str, adapter: str, rows: list[dict]) -> float:
    """Token-weighted mean NLL over the held-out rows' supervised (assistant) tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_pipeline.constants import IGNORE_INDEX

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(model, adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            labels = torch.tensor([row["labels"]], device=device)
            logits = model(ids).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(loss)
            count += int((target != IGNORE_INDEX).sum())
    return total / max(count, 1)
