"""What the train stage leaves behind: adapter (or full model), metrics, loss curve, merged export.

* ``ADAPTER_DIR``: for ``lora``/``qlora`` the PEFT adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``, loadable with ``peft.AutoPeftModelForCausalLM``);
  for ``full`` the whole fine-tuned model (``AutoModelForCausalLM``). The tokenizer
  (with its chat template) is saved next to it in both cases.
* ``METRICS_FILE``, ``LOSS_CURVE_FILE``: see :func:`collect_metrics`.
* ``MERGED_DIR`` (``train.merge_export``): the adapter merged into a bf16 copy of the
  base, written only after its logits were checked against the unmerged adapter's.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from sft_pipeline.constants import ADAPTER_DIR, LOSS_CURVE_FILE, MERGED_DIR, METRICS_FILE
from sft_pipeline.errors import VerificationError
from sft_pipeline.files import atomic_dir, write_json
from sft_pipeline.models import NonFiniteError, check_finite_tensors
from sft_pipeline.train import metrics as measures
from sft_pipeline.train.memory import audit_parameters
from sft_pipeline.train.ranks import sum_and_max

log = logging.getLogger(__name__)

MERGE_DTYPE = torch.bfloat16
MERGE_CHECK_ROWS = 4
MERGE_CHECK_TOKENS = 64
# bf16 rounding of W + BA versus W·x + B(A·x): a few parts per thousand of the logit range.
MERGE_MAX_RELATIVE_ERROR = 0.02


def collect_metrics(trainer, output, cfg, data, *, resumed_from, attempts) -> dict:
    """Everything measured in this run, as written to ``METRICS_FILE``.

    Token counts and throughput cover the steps this run made (after a resume: not the
    ones before it), summed over all ranks; peak memory is the largest of any one rank's;
    ``loss`` covers every step since the start (restored from the checkpoint's trainer state).
    Every rank must call this (the totals are a collective operation).
    """
    memory, memory_kind = measures.peak_memory()
    (non_pad, supervised), (memory,) = sum_and_max(trainer.accelerator, list(trainer.token_counter.totals()), [memory])
    world = trainer.accelerator.num_processes
    runtime = float(output.metrics.get("train_runtime", 0.0))
    device = measures.device_name()
    n_params = measures.count_parameters(trainer.model)
    peak = measures.peak_flops(device)
    history = measures.loss_history(trainer.state.log_history)
    final, estimate = attempts[-1], trainer.memory_plan.record()
    return {
        "method": cfg.method,
        "device": device,
        "num_processes": world,
        "steps": int(trainer.state.global_step),
        "resumed_from_step": resumed_from,
        "micro_batch": final["micro_batch"],
        "gradient_accumulation": final["gradient_accumulation"],
        "effective_batch": final["micro_batch"] * final["gradient_accumulation"] * world,
        "attempts": attempts,
        "final_loss": history[-1]["loss"] if history else None,
        "loss": history,
        "train_runtime_s": round(runtime, 3),
        "non_pad_tokens": non_pad,
        "supervised_tokens": supervised,
        "tokens_per_s": round(non_pad / runtime, 2) if runtime > 0 else None,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "num_parameters": n_params,
        "peak_flops": peak,
        "mfu": measures.model_flops_utilisation(n_params, non_pad, runtime, peak * world if peak else None),
        "data": data.stats(),
        # Estimated before the last attempt (sft_pipeline.train.fitting), beside peak_memory_bytes measured.
        "estimated_peak_memory_bytes": estimate["peak_bytes"] if estimate else None,
        "memory_estimate": estimate,
        "parameters": [asdict(group) for group in audit_parameters(trainer.model)],
    }


def save_trained(trainer, out_dir: Path) -> Path:
    """Save the adapter (or the full model for ``full``) and the tokenizer."""
    target = out_dir / ADAPTER_DIR
    trainer.save_model(str(target))  # also saves the processing class (tokenizer)
    if trainer.is_world_process_zero() and not any(target.glob("*.safetensors")):
        raise VerificationError(f"train: the trainer saved no weights under {target}")
    return target


def refuse_non_finite(adapter: Path) -> None:
    """Delete and refuse saved weights holding NaN or infinite values (``NonFiniteError``, one line)."""
    try:
        check_finite_tensors(adapter)
    except NonFiniteError:
        shutil.rmtree(adapter, ignore_errors=True)
        raise


def check_inputs(data, rows: int = MERGE_CHECK_ROWS, tokens: int = MERGE_CHECK_TOKENS) -> list[list[int]]:
    """A few token sequences from the training rows (the first sequence of a packed row)."""
    picked = data.dataset.select(range(min(rows, len(data.dataset))))
    out = []
    for row in picked:
        length = row["seq_lengths"][0] if data.packed else len(row["input_ids"])
        out.append(list(row["input_ids"][: min(length, tokens)]))
    return out


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude.

    >>> relative_error(torch.tensor([2.0, -4.0]), torch.tensor([2.0, -3.9]))
    0.025
    """
    scale = reference.abs().max().clamp(min=torch.finfo(torch.float32).tiny)
    return round(float((reference - other).abs().max() / scale), 6)


def _logits(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(torch.tensor([ids], device=device)).logits.float().cpu() for ids in sequences]


def merge_export(model_cfg, out_dir: Path, data, tokenizer) -> dict:
    """Merge the adapter into a bf16 base, check logits agree, save it under ``MERGED_DIR``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_pipeline.models import resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model(model_cfg), dtype=MERGE_DTYPE, revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code, device_map={"": device},
    )
    model = PeftModel.from_pretrained(base, str(out_dir / ADAPTER_DIR)).eval()
    sequences = check_inputs(data)
    with_adapter = torch.cat([x.flatten() for x in _logits(model, sequences)])
    with model.disable_adapter():
        without = torch.cat([x.flatten() for x in _logits(model, sequences)])
    merged = model.merge_and_unload()
    after = torch.cat([x.flatten() for x in _logits(merged, sequences)])
    check = {
        "sequences": len(sequences),
        "dtype": str(MERGE_DTYPE).removeprefix("torch."),
        "merge_relative_error": relative_error(with_adapter, after),
        "adapter_relative_effect": relative_error(with_adapter, without),
        "max_relative_error": MERGE_MAX_RELATIVE_ERROR,
    }
    if check["merge_relative_error"] > MERGE_MAX_RELATIVE_ERROR:
        raise VerificationError(
            f"train: merged model logits differ from the adapter's by {check['merge_relative_error']:.4f} "
            f"(relative; allowed {MERGE_MAX_RELATIVE_ERROR})"
        )
    with atomic_dir(out_dir / MERGED_DIR) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("merged model saved (logit relative error %.5f)", check["merge_relative_error"])
    return check


def write_reports(metrics: dict, out_dir: Path) -> None:
    write_json(out_dir / METRICS_FILE, metrics)
    if metrics["loss"]:
        measures.plot_loss_curve(metrics["loss"], out_dir / LOSS_CURVE_FILE, f"SFT ({metrics['method']})")


SUMMARY_KEYS = (
    "method", "steps", "final_loss", "tokens_per_s", "peak_memory_bytes", "estimated_peak_memory_bytes",
    "supervised_tokens", "resumed_from_step", "micro_batch", "gradient_accumulation", "non_pad_tokens", "mfu",
    "num_processes",
)


def summary(metrics: dict) -> dict:
    """The scalar subset returned to the stage runner (goes into the manifest).

    >>> summary({"steps": 3, "loss": [1.0], "method": "lora"})
    {'method': 'lora', 'steps': 3}
    """
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
