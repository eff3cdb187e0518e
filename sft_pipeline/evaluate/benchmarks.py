"""Prompt benchmarks scored by program: one entry each in :data:`BENCHMARKS`.

A benchmark is a loader ``load(path, limit) -> rows`` (each row with ``key``, ``prompt``,
``instruction_id_list`` and ``kwargs``) and a scorer ``score(rows, responses) -> (aggregate,
verdicts)`` whose aggregate has ``prompt_strict``, ``inst_strict``, ``prompt_loose`` and
``inst_loose`` and whose verdicts hold, per prompt, bools at prompt level and one bool per
instruction (as :func:`sft_pipeline.evaluate.ifeval.evaluate_ifeval`). Its metrics are named
``<name>_<aggregate key>``; both models answer every benchmark's prompts with the same decoding.
Adding a benchmark is one :class:`Benchmark` entry plus its two ``eval`` config keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sft_pipeline.evaluate.ifbench import evaluate_ifbench, load_ifbench_prompts
from sft_pipeline.evaluate.ifeval import evaluate_ifeval, load_ifeval_prompts

Loader = Callable[[str | Path, int | None], list[dict]]
Scorer = Callable[[list[dict], list[str]], tuple[dict[str, float], list[dict]]]


@dataclass(frozen=True)
class Benchmark:
    name: str  # metric prefix and eval.json key, e.g. "ifeval"
    title: str  # shown in the report
    prompts_key: str  # EvalConfig field: the prompt file (a path or package: path)
    limit_key: str  # EvalConfig field: how many prompts to use (None: all)
    load: Loader
    score: Scorer
    checkers: str  # whose checkers score it, for the report


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("ifeval", "IFEval", "ifeval_prompts", "num_ifeval_prompts", load_ifeval_prompts, evaluate_ifeval,
              "IFEval's checkers from lm-eval"),
    Benchmark("ifbench", "IFBench", "ifbench_prompts", "num_ifbench_prompts", load_ifbench_prompts,
              evaluate_ifbench, "IFBench's own evaluation code and checkers (if-verifiable's copy, no spaCy)"),
)

