"""Instruction following checked by program, with IFEval's own checkers from ``lm-eval``.

Prompts use IFEval's format: ``key``, ``prompt``, ``instruction_id_list`` and one
``kwargs`` dict per instruction. Responses are scored by
``lm_eval.tasks.ifeval.utils.process_results`` (strict and loose, prompt level and
instruction level); nothing here re-implements a checker.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sft_pipeline.errors import InputError
from sft_pipeline.evaluate.prompts import load_prompt_rows

# lm-eval's result names -> ours.
RESULT_NAMES = {
    "prompt_level_strict_acc": "prompt_strict",
    "inst_level_strict_acc": "inst_strict",
    "prompt_level_loose_acc": "prompt_loose",
    "inst_level_loose_acc": "inst_loose",
}
LANGDETECT_SEED = 0  # langdetect is random unless seeded


@functools.lru_cache(maxsize=1)
def _lm_eval_ifeval():
    """Import lm-eval's IFEval modules offline (punkt_tab from a package, seeded langdetect)."""
    import langdetect

    from sft_pipeline.evaluate.punkt_data import ensure_punkt_tab

    ensure_punkt_tab()
    langdetect.DetectorFactory.seed = LANGDETECT_SEED
    from lm_eval.tasks.ifeval import instructions_registry, utils

    return instructions_registry, utils


def instruction_registry() -> dict[str, type]:
    return _lm_eval_ifeval()[0].INSTRUCTION_DICT


def _check_instruction(inst_id: str, kwargs: Any, prompt: str, where: str) -> None:
    registry = instruction_registry()
    if inst_id not in registry:
        raise InputError(f"{where}: unknown instruction id {inst_id!r}")
    try:
        registry[inst_id](inst_id).build_description(**{k: v for k, v in kwargs.items() if v})
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: bad kwargs for {inst_id}: {exc}") from None


def load_ifeval_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Read and validate an IFEval-format JSONL file; keep the first ``limit`` prompts."""
    return load_prompt_rows(path, "IFEval prompts", _check_instruction, limit)


def score_response(row: dict, response: str) -> dict[str, Any]:
    """lm-eval's IFEval verdicts for one response: bools at prompt level, lists per instruction."""
    results = _lm_eval_ifeval()[1].process_results(row, [response])
    return {ours: results[theirs] for theirs, ours in RESULT_NAMES.items()}


def mean(values: list[float]) -> float:
    """Arithmetic mean, 0.0 for no values.

    >>> mean([1, 0, 1, 0]), mean([])
    (0.5, 0.0)
    """
    return sum(values) / len(values) if values else 0.0


def aggregate(verdicts: list[dict]) -> dict[str, float]:
    """Prompt-level and instruction-level accuracy, strict and loose (as lm-eval aggregates).

    >>> v = [{"prompt_strict": True, "inst_strict": [True, True],
    ...       "prompt_loose": True, "inst_loose": [True, True]},
    ...      {"prompt_strict": False, "inst_strict": [True, False],
    ...       "prompt_loose": True, "inst_loose": [True, True]}]
    >>> aggregate(v)
    {'prompt_strict': 0.5, 'inst_strict': 0.75, 'prompt_loose': 1.0, 'inst_loose': 1.0}
    """
    out = {}
    for name in RESULT_NAMES.values():
        if name.startswith("prompt"):
            out[name] = mean([float(v[name]) for v in verdicts])
        else:
            out[name] = mean([float(x) for v in verdicts for x in v[name]])
    return out


def per_instruction(rows: list[dict], verdicts: list[dict]) -> dict[str, list[int]]:
    """Loose passes and totals per instruction id: ``{id: [passed, total]}``."""
    table: dict[str, list[int]] = {}
    for row, verdict in zip(rows, verdicts):
        for inst_id, ok in zip(row["instruction_id_list"], verdict["inst_loose"]):
            cell = table.setdefault(inst_id, [0, 0])
            cell[0] += int(ok)
            cell[1] += 1
    return dict(sorted(table.items()))


def evaluate_ifeval(rows: list[dict], responses: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Aggregate metrics and per-prompt verdicts for one model's responses."""
    verdicts = [score_response(row, resp) for row, resp in zip(rows, responses)]
    return aggregate(verdicts), verdicts
