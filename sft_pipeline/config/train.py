"""The ``train`` section: the method, its hyperparameters, speed levers, checkpoints and where it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sft_pipeline.config.base import Section


class LoraSection(Section):
    """The LoRA adapter (methods lora and qlora)."""

    r: int = Field(default=16, ge=1, description="The adapter's rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, allow_inf_nan=False, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="The modules that get an adapter (names as in the model).")


class TrainConfig(Section):
    """Supervised fine-tuning with TRL's SFTTrainer on the tokenize stage's rows."""

    method: Literal["qlora", "lora", "full"] = Field(default="qlora", description=(
        "qlora: LoRA adapters on an NF4 (4-bit) base; lora: LoRA adapters on a 16-bit base (fp32 on the CPU); "
        "full: every weight trained."))
    lora: LoraSection = Field(default_factory=LoraSection, description="The adapter (lora and qlora).")
    learning_rate: float = Field(default=2e-5, gt=0, allow_inf_nan=False, description="The peak learning rate.")
    lr_scheduler: str = Field(default="cosine", description="A transformers scheduler name (cosine, linear, ...).")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, allow_inf_nan=False, description=(
        "The share of steps spent warming the learning rate up."))
    num_epochs: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Passes over the training rows.")
    max_steps: int = Field(default=-1, ge=-1, description=(
        "Optimizer steps to run; -1: as many as num_epochs takes (0, which would train nothing, is refused)."))
    batch_size: int = Field(default=4, ge=1, description="Rows per micro-batch and device.")
    gradient_accumulation: int = Field(default=4, ge=1, description="Micro-batches per optimizer step.")
    gradient_checkpointing: bool = Field(default=False, description=(
        "Recompute activations in the backward pass: less memory, about 30 % more compute."))
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"] = \
        Field(default="sdpa", description=(
            "The attention kernel: sdpa ships with torch; flex_attention (CUDA + triton) and flash_attention_2/3 "
            "(their wheel) are varlen kernels (sft_pipeline.train.levers)."))
    padding_free: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "Unpacked rows as one flattened sequence per micro-batch (TRL's position-id path, no pad tokens); auto: "
        "only with a varlen attention kernel (sdpa would build a dense mask over the whole micro-batch)."))
    auto_checkpointing: bool = Field(default=True, description=(
        "On CUDA, in one process: train an attempt with gradient checkpointing on when its estimated peak memory "
        "(sft_pipeline.train.fitting) exceeds 90 % of the GPU's free memory; no effect on a CPU."))
    template_tokens: Literal["untrained", "all", "none"] = Field(default="untrained", description=(
        "lora/qlora: which embedding rows of the chat template's special tokens train besides the adapters (tied "
        "to the LM head): untrained = those whose norm is below untrained_norm_ratio x the median row norm (a base "
        "model never saw them); all = every special token the template writes; none = no rows "
        "(sft_pipeline.train.template_tokens)."))
    untrained_norm_ratio: float = Field(default=0.5, gt=0, lt=1, description=(
        "template_tokens=untrained: a row whose norm is below this fraction of the median row norm is untrained."))
    liger_kernels: bool = Field(default=False, description=(
        "Liger's Triton RMSNorm/SwiGLU/RoPE kernels (CUDA only; ignored with a log line on the CPU)."))
    logging_steps: int = Field(default=1, ge=1, description="Log the loss every this many optimizer steps.")
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"], description=(
        "Training curves: tensorboard (event files in <train output>/tensorboard), mlflow (to run.tracking_uri)."))
    progress_steps: int = Field(default=5, ge=1, description="A progress log line every this many optimizer steps.")
    save_steps: int = Field(default=50, ge=1, description="A checkpoint every this many optimizer steps.")
    save_total_limit: int | None = Field(default=2, ge=2, description=(
        "Checkpoints kept (at least 2: a kill during a save leaves one complete); None: all."))
    merge_export: bool = Field(default=False, description=(
        "lora/qlora: also save the adapter merged into a 16-bit base under <train output>/merged."))
    work_pool: str | None = Field(default=None, description=(
        "Run training on this Prefect work pool (deployment sft-train/gpu); None: in the flow's process."))
    num_processes: int = Field(default=1, ge=1, description=(
        "More than 1: `accelerate launch` this many ranks (one per GPU; CPU ranks where there is none); the "
        "effective batch grows by this factor."))
    distributed: Literal["ddp", "fsdp"] = Field(default="ddp", description=(
        "The strategy across ranks when num_processes > 1."))

    @field_validator("max_steps")
    @classmethod
    def _check_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 steps would train nothing; give a number of steps, or -1 to run num_epochs")
        return value

    @model_validator(mode="after")
    def _check_merge(self) -> "TrainConfig":
        if self.merge_export and self.method == "full":
            raise ValueError("merge_export applies to lora/qlora only (full already saves the whole model)")
        return self
