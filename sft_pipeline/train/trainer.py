"""The train stage: TRL ``SFTTrainer`` on our pre-tokenized rows, with resume and OOM back-off.

The rows go to the trainer as they are (``skip_prepare_dataset``): TRL's
``DataCollatorForLanguageModeling`` pads them (or, for packed rows, flattens them
padding-free using ``seq_lengths``) and uses our ``labels`` unchanged.

Methods (``train.method``):

* ``qlora``: NF4 base with double quantisation, bf16 compute on a GPU (fp32 on the
  CPU), ``peft.prepare_model_for_kbit_training``, LoRA adapters;
* ``lora``: LoRA adapters on a 16-bit base (bf16 on a GPU, fp32 on the CPU);
* ``full``: every weight trained (fp32 master weights, bf16 autocast on a GPU).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from sft_pipeline import constants as C
from sft_pipeline.config import LoraSection, ModelConfig, TrainConfig
from sft_pipeline.errors import ConfigError, InputError, PipelineError
from sft_pipeline.models import GRADIENT_CHECKPOINTING_DEPRECATION, compute_dtype, ignoring, load_causal_lm, load_tokenizer
from sft_pipeline.train import metrics as M
from sft_pipeline.train import ranks
from sft_pipeline.train.data import TrainData, load_train_data
from sft_pipeline.train.failures import RankOutOfMemory, batch_schedule, is_oom, is_transient, oom_exhausted
from sft_pipeline.train.levers import Levers, checkpointing_kwargs, resolve_levers
from sft_pipeline.train.resume import CompleteMarker, latest_complete_checkpoint, remove_incomplete, saved_step

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the hub on trainer creation otherwise

PEFT_TASK_TYPE = "CAUSAL_LM"
NO_REPORTING = "none"
STEPS = "steps"
NOISY_WARNINGS = (GRADIENT_CHECKPOINTING_DEPRECATION, (UserWarning, r".*pin_memory.*"))


@contextlib.contextmanager
def quiet_training():
    """No progress bars and no known-harmless warnings while the stage runs."""
    import datasets
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        with ignoring(*NOISY_WARNINGS):
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
            datasets.enable_progress_bars()


@contextlib.contextmanager
def one_line_errors(what: str):
    """Turn deterministic loading/configuration failures into one-line pipeline errors."""
    try:
        yield
    except PipelineError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        if is_transient(exc) or is_oom(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        kind = InputError if isinstance(exc, OSError) else ConfigError
        raise kind(f"{what}: {first}") from exc


def lora_config(section: LoraSection):
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules),
        bias="none",
        task_type=PEFT_TASK_TYPE,
    )


def load_model(model_cfg: ModelConfig, cfg: TrainConfig, levers: Levers = Levers()):
    """The base model prepared for ``cfg.method`` (adapters are added by the trainer)."""
    from peft import prepare_model_for_kbit_training

    model = load_causal_lm(model_cfg, quantize_4bit=cfg.method == "qlora",
                           attn_implementation=levers.attn_implementation)
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.method == "full" and model.dtype != torch.float32:
        model = model.float()  # fp32 master weights; bf16 autocast does the compute
    return model


def training_args(cfg: TrainConfig, out_dir: Path, data: TrainData, *, seed: int, micro: int, accumulation: int,
                  levers: Levers = Levers()):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out_dir / C.CHECKPOINTS_DIR),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        **checkpointing_kwargs(cfg.gradient_checkpointing),  # the name differs across transformers 5 releases
        bf16=compute_dtype() == torch.bfloat16,
        fp16=False,
        logging_strategy=STEPS,
        logging_steps=cfg.logging_steps,
        save_strategy=STEPS,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=seed,
        data_seed=seed,
        report_to=NO_REPORTING,
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient (PEFT's DDP advice)
        # Rows are already tokenized, labelled and truncated (or packed) by the tokenize stage.
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=data.packed,  # packed rows train padding-free; nothing is re-packed
        max_length=data.max_row_tokens if data.packed else None,
        **levers.sft_kwargs(),  # padding-free unpacked rows, Liger kernels (sft_pipeline.train.levers)
    )


def _counting_trainer_class():
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that counts the non-pad and supervised tokens it trains on."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.token_counter = M.TokenCounter()

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.token_counter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    class LogLines(TrainerCallback):
        """Training logs as log records instead of printed dicts."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])

    return CountingSFTTrainer, LogLines


def build_trainer(model_cfg, cfg, out_dir, data, tokenizer, *, seed, micro, accumulation, callbacks=()):
    from transformers import PrinterCallback, set_seed

    trainer_cls, log_lines = _counting_trainer_class()
    levers = resolve_levers(cfg)
    with one_line_errors("train"):
        args = training_args(cfg, out_dir, data, seed=seed, micro=micro, accumulation=accumulation, levers=levers)
    set_seed(seed)
    with one_line_errors(f"model {model_cfg.name_or_path}"):
        model = load_model(model_cfg, cfg, levers)
    with one_line_errors("train.lora" if cfg.method != "full" else "train"):
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=data.dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg.lora) if cfg.method != "full" else None,
            callbacks=[CompleteMarker(), log_lines(), *callbacks],
        )
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_attempt(model_cfg, cfg, out_dir, data, tokenizer, *, seed, micro, accumulation, callbacks=()):
    """One training run at a given micro-batch, resuming from the latest complete checkpoint."""
    ckpt_dir = out_dir / C.CHECKPOINTS_DIR
    dropped = remove_incomplete(ckpt_dir) if ranks.is_main_rank() else []
    if dropped:
        log.warning("ignoring incomplete checkpoint(s) left by a killed run: %s", ", ".join(dropped))
    resume = latest_complete_checkpoint(ckpt_dir)
    resumed_from = saved_step(resume) if resume else None
    if resume:
        log.info("resuming from %s (step %d)", resume.name, resumed_from)
    M.reset_peak_memory()
    trainer = build_trainer(model_cfg, cfg, out_dir, data, tokenizer, seed=seed, micro=micro,
                            accumulation=accumulation, callbacks=callbacks)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, output, resumed_from


def release() -> None:
    """Give a failed attempt's memory back to the allocator before the retry."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_with_backoff(model_cfg, cfg, out_dir, data, tokenizer, *, seed, callbacks=()):
    """Run training, halving the micro-batch (same effective batch) on out-of-memory errors.

    One rank of several re-raises the error instead: its peers cannot follow it, so the
    launcher (:func:`sft_pipeline.train.launch.launch_training`) backs off for all of them.
    """
    attempts: list[dict] = []
    for micro, accumulation in batch_schedule(cfg.batch_size, cfg.gradient_accumulation):
        try:
            trainer, output, resumed_from = run_attempt(
                model_cfg, cfg, out_dir, data, tokenizer, seed=seed, micro=micro,
                accumulation=accumulation, callbacks=callbacks,
            )
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried here
            if not is_oom(exc):
                raise
            if ranks.world_size() > 1:
                raise RankOutOfMemory(f"out of memory at micro-batch {micro}") from exc
            attempts.append({"micro_batch": micro, "gradient_accumulation": accumulation, "outcome": "oom"})
            log.warning("out of memory at micro-batch %d; retrying with a smaller one", micro)
        else:
            attempts.append({"micro_batch": micro, "gradient_accumulation": accumulation, "outcome": "ok"})
            return trainer, output, resumed_from, attempts
        release()  # outside the handler, so the failed attempt's frames (and model) are gone
    raise oom_exhausted(cfg)


def train_model(
    model_cfg: ModelConfig,
    tokenized_dir: Path,
    out_dir: Path,
    cfg: TrainConfig,
    *,
    seed: int,
    callbacks: Sequence = (),
) -> dict:
    """Train on ``tokenized_dir/TRAIN_TOKENS_FILE`` and write the adapter, metrics and loss curve to ``out_dir``.

    ``out_dir`` persists across retries: checkpoints in ``out_dir/CHECKPOINTS_DIR`` let a
    re-run resume from the latest complete one. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects (progress reporting, tests).
    Returns the counts recorded in the stage manifest.
    """
    from sft_pipeline.train import export

    out_dir = Path(out_dir)
    with quiet_training():
        data = load_train_data(Path(tokenized_dir) / C.TRAIN_TOKENS_FILE)
        with one_line_errors(f"model {model_cfg.name_or_path}"):
            tokenizer = load_tokenizer(model_cfg)
        trainer, output, resumed_from, attempts = train_with_backoff(
            model_cfg, cfg, out_dir, data, tokenizer, seed=seed, callbacks=callbacks
        )
        metrics = export.collect_metrics(trainer, output, cfg, data, resumed_from=resumed_from, attempts=attempts)
        export.save_trained(trainer, out_dir)
        main_process = trainer.is_world_process_zero()
        del trainer, output
        release()
        if not main_process:
            return export.summary(metrics)
        if cfg.merge_export:
            metrics["merge"] = export.merge_export(model_cfg, out_dir, data, tokenizer)
        export.write_reports(metrics, out_dir)
    return export.summary(metrics)
