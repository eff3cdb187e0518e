"""Training in this process: TRL ``SFTTrainer`` on our pre-tokenized rows, with resume and OOM back-off.

:func:`train_model` takes one :class:`~sft_pipeline.train.job.TrainJob`; each attempt of
:func:`~sft_pipeline.train.failures.back_off` runs it at one :class:`~sft_pipeline.train.job.Batch`.
Every run carries the guards (:mod:`~sft_pipeline.train.guards`), checkpoint markers,
progress lines (:mod:`~sft_pipeline.train.progress`) and ``train.report_to``'s reporters.

The rows go to the trainer as they are (``skip_prepare_dataset``): TRL's
``DataCollatorForLanguageModeling`` pads them (or, for packed rows, flattens them
padding-free using ``seq_lengths``) and uses our ``labels`` unchanged.

Methods (``train.method``):

* ``qlora``: NF4 base with double quantisation, bf16 compute on a GPU (fp32 on the
  CPU), LoRA adapters; the unquantised weights (embeddings, LM head, norms) stay in the
  compute dtype, as TRL's ``SFTTrainer`` keeps them (``peft.prepare_model_for_kbit_training``
  would upcast them to fp32: on the GPU check, an 8B model's 128k-vocabulary head in fp32);
* ``lora``: LoRA adapters on a 16-bit base (bf16 on a GPU, fp32 on the CPU);
* ``full``: every weight trained (fp32 master weights, bf16 autocast on a GPU).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from typing import Sequence

import torch

from sft_pipeline import supervised_head
from sft_pipeline.config import LoraSection, ModelConfig, TrainConfig
from sft_pipeline.errors import ConfigError, InputError, PipelineError
from sft_pipeline.models import GRADIENT_CHECKPOINTING_DEPRECATION, compute_dtype, ignoring, load_causal_lm, load_tokenizer
from sft_pipeline.train import ranks, template_tokens
from sft_pipeline.train.data import TrainData, load_train_data
from sft_pipeline.train.failures import RankOutOfMemory, back_off, is_oom, is_transient
from sft_pipeline.train.fitting import measured_line, plan_memory
from sft_pipeline.train.guards import FiniteGuard, StopWhenComplete, TrainingComplete, finished_output
from sft_pipeline.train.job import Batch, TrainJob
from sft_pipeline.train.levers import Levers, checkpointing_kwargs, resolve_levers
from sft_pipeline.train.metrics import TokenCounter, reset_peak_memory
from sft_pipeline.train.progress import Progress
from sft_pipeline.train.reporting import reporting_callbacks
from sft_pipeline.train.resume import (CheckpointMirror, CompleteMarker, latest_complete_checkpoint, remove_incomplete,
                                       saved_step)

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


def lora_config(section: LoraSection, token_rows: Sequence[int] = ()):
    """PEFT's LoraConfig; ``token_rows``: embedding rows trained besides the adapters (tied to the head)."""
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules),
        bias="none",
        task_type=PEFT_TASK_TYPE,
        trainable_token_indices=list(token_rows) or None,
    )


def load_model(model_cfg: ModelConfig, cfg: TrainConfig, levers: Levers = Levers()):
    """The base model prepared for ``cfg.method`` (adapters are added by the trainer) and ``levers``."""
    model = load_causal_lm(model_cfg, quantize_4bit=cfg.method == "qlora",
                           attn_implementation=levers.attn_implementation)
    if cfg.method == "qlora":
        for param in model.parameters():
            param.requires_grad_(False)  # the frozen base; PEFT adds the trainable adapters
        if levers.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need an input that carries a gradient
    elif cfg.method == "full" and model.dtype != torch.float32:
        model = model.float()  # fp32 master weights; bf16 autocast does the compute
    return model


def training_args(job: TrainJob, data: TrainData, batch: Batch, levers: Levers = Levers()):
    from trl import SFTConfig

    cfg = job.train
    return SFTConfig(
        output_dir=str(job.checkpoints_dir),
        per_device_train_batch_size=batch.micro,
        gradient_accumulation_steps=batch.accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        **checkpointing_kwargs(levers.gradient_checkpointing),  # the name differs across transformers 5 releases
        bf16=compute_dtype() == torch.bfloat16,
        fp16=False,
        logging_strategy=STEPS,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a diverged loss is logged as it is, for FiniteGuard to stop the run
        save_strategy=STEPS,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=job.seed,
        data_seed=job.seed,
        report_to=NO_REPORTING,  # train.report_to's callbacks are added by reporting.reporting_callbacks
        run_name=f"train-{job.out_dir.name}",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient (PEFT's DDP advice)
        # Rows are already tokenized, labelled and truncated (or packed) by the tokenize stage.
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=data.packed,  # packed rows train padding-free; nothing is re-packed
        max_length=data.max_row_tokens if data.packed else None,
        **levers.sft_kwargs(),  # padding-free unpacked rows, Liger kernels (sft_pipeline.train.levers)
    )


@contextlib.contextmanager
def kept_trainable_dtypes(model):
    """Trainable weights keep their dtype across a checkpoint load.

    TRL trains QLoRA adapters in bf16, and PEFT's ``load_adapter`` (what the Trainer calls on resume)
    upcasts them to fp32: a resumed run then trained at another precision and published different
    weights. bf16 -> fp32 -> bf16 is exact, so the resumed run continues the uninterrupted one.
    """
    dtypes = {name: param.dtype for name, param in model.named_parameters() if param.requires_grad}
    yield
    for name, param in model.named_parameters():
        if name in dtypes and param.dtype != dtypes[name]:
            param.data = param.data.to(dtypes[name])


def _counting_trainer_class():
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that counts the non-pad and supervised tokens it trains on."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.token_counter = TokenCounter()

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.token_counter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            with kept_trainable_dtypes(model or self.model):
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    return CountingSFTTrainer


def stage_callbacks(job: TrainJob) -> list:
    """Callbacks every run has: guards, checkpoint completion markers, then the checkpoint mirror."""
    mirror = [CheckpointMirror(job.checkpoint_url)] if job.checkpoint_url else []
    return [StopWhenComplete(), FiniteGuard(), CompleteMarker(), *mirror]


def build_trainer(job: TrainJob, data: TrainData, tokenizer, batch: Batch, callbacks: Sequence = ()):
    from transformers import PrinterCallback, set_seed

    trainer_cls = _counting_trainer_class()
    memory_plan = plan_memory(job, data, batch.micro, resolve_levers(job.train))  # may switch checkpointing on
    levers = memory_plan.levers
    with one_line_errors("train"):
        args = training_args(job, data, batch, levers)
    set_seed(job.seed)
    with one_line_errors(f"model {job.model.name_or_path}"):
        model = load_model(job.model, job.train, levers)
    adapters = job.train.method != "full"
    rows = template_tokens.choose(model, tokenizer, job.train.template_tokens,
                                  job.train.untrained_norm_ratio) if adapters else []
    with one_line_errors("train.lora" if adapters else "train"):
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=data.dataset,
            processing_class=tokenizer,
            peft_config=lora_config(job.train.lora, rows) if adapters else None,
            callbacks=[*stage_callbacks(job), *callbacks],
        )
    trainer.remove_callback(PrinterCallback)
    template_tokens.keep_rows_in_fp32(trainer.model)
    if rows or not torch.cuda.is_available():
        supervised_head.attach(trainer.model)  # exact for trained rows; on a CPU, the head only where the loss reads
    trainer.memory_plan = memory_plan
    return trainer


def run_attempt(job: TrainJob, batch: Batch, data: TrainData, tokenizer, callbacks: Sequence = ()):
    """One training run at ``batch``, resuming from the latest complete checkpoint.

    Returns the trainer, its ``TrainOutput`` and the step resumed from (None: from scratch).
    """
    dropped = remove_incomplete(job.checkpoints_dir) if ranks.is_main_rank() else []
    if dropped:
        log.warning("ignoring incomplete checkpoint(s) left by a killed run: %s", ", ".join(dropped))
    resume = latest_complete_checkpoint(job.checkpoints_dir)
    resumed_from = saved_step(resume) if resume else None
    if resume:
        log.info("resuming from %s (step %d)", resume.name, resumed_from)
    reset_peak_memory()
    trainer = build_trainer(job, data, tokenizer, batch, callbacks)
    try:
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except TrainingComplete:
        output = finished_output(trainer.state)
    return trainer, output, resumed_from


def release() -> None:
    """Give a failed attempt's memory back to the allocator before the retry."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rank_attempt(job: TrainJob, data: TrainData, tokenizer, callbacks: Sequence):
    """The attempt :func:`back_off` drives in this process.

    One rank of several re-raises out-of-memory as :class:`RankOutOfMemory` instead: its
    peers cannot follow it to a smaller batch, so the launcher backs off for all of them.
    """

    def attempt(batch: Batch):
        try:
            return run_attempt(job, batch, data, tokenizer, callbacks)
        except Exception as exc:
            if is_oom(exc) and ranks.world_size() > 1:
                raise RankOutOfMemory(f"out of memory at micro-batch {batch.micro}") from exc
            raise

    return attempt


def train_model(job: TrainJob, *, callbacks: Sequence = ()) -> dict:
    """Train in this process on ``job.train_file``; write the adapter, metrics and loss curve to ``job.out_dir``.

    ``job.out_dir`` persists across retries: checkpoints in ``job.checkpoints_dir`` let a
    re-run resume from the latest complete one. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects (progress reporting, tests).
    Returns the counts recorded in the stage manifest.
    """
    from sft_pipeline.train import export

    with quiet_training(), reporting_callbacks(job) as reporters:
        data = load_train_data(job.train_file)
        with one_line_errors(f"model {job.model.name_or_path}"):
            tokenizer = load_tokenizer(job.model)
        extra = [Progress(job.train.progress_steps), *reporters, *callbacks]
        (trainer, output, resumed_from), attempts = back_off(
            job.batch, rank_attempt(job, data, tokenizer, extra), release)
        metrics = export.collect_metrics(trainer, output, job.train, data, resumed_from=resumed_from, attempts=attempts)
        log.info("%s", measured_line(metrics))
        adapter = export.save_trained(trainer, job.out_dir)
        main_process = trainer.is_world_process_zero()
        del trainer, output
        release()
        if not main_process:
            return export.summary(metrics)
        export.refuse_non_finite(adapter)
        if job.train.merge_export:
            metrics["merge"] = export.merge_export(job.model, job.out_dir, data, tokenizer)
        export.write_reports(metrics, job.out_dir)
    return export.summary(metrics)
