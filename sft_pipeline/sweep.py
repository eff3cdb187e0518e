"""Threshold sweep: which filter setting makes the best model, and how sure we are.

Each branch is the pipeline with one filter setting (a threshold or a top fraction); ingest and
score are shared. Every branch trains with the same step budget, seed and schedule, and is
evaluated on one held-out set drawn before filtering (the held-out rows of a keep-everything
filter, tokenized without a row cap) and the same prompts, so a stricter filter does not also get
an easier test. Branches are compared with paired bootstrap intervals on the evaluation's per-item
results (sft_pipeline.evaluate.metrics), against the base model and against the branch of the
config's own setting. The recommended setting has the best primary metric among the branches the
gate does not reject; the branches not significantly different from it are named with it.

With a random control (``--random-control``), each setting also gets a branch that keeps as many rows as
the setting keeps, drawn at random from every scored row (``filter.random_rows``, seeded by ``run.seed``),
trained and evaluated like every branch; the report says whether each setting beats its control on the
primary metric (the paired interval of setting minus control). A control is never recommended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from sft_pipeline.config import PipelineConfig, validate_config
from sft_pipeline.errors import ConfigError
from sft_pipeline.verdicts import BETTER, NO_CHANGE, WORSE

THRESHOLD, TOP_FRACTION, RANDOM_ROWS = "threshold", "top_fraction", "random_rows"
NOT_PROMOTED = "not_promoted"
BETTER_IS = {1: max, -1: min}  # metric direction -> pick
# A setting against its random control, from the paired interval of setting minus control on the primary metric.
BEATS, WORSE_THAN, INDISTINGUISHABLE, UNMEASURED = (
    "beats random", "worse than random", "indistinguishable from random", "not measured")
AGAINST_RANDOM = {BETTER: BEATS, WORSE: WORSE_THAN, NO_CHANGE: INDISTINGUISHABLE}


@dataclass(frozen=True)
class Branch:
    """One filter setting of the sweep."""

    kind: str  # THRESHOLD, TOP_FRACTION, or RANDOM_ROWS (a random control)
    value: float
    current: bool = False  # the config's own setting

    @property
    def name(self) -> str:
        """
        >>> Branch(THRESHOLD, 0.7).name, Branch(RANDOM_ROWS, 1234567).name
        ('threshold=0.7', 'random_rows=1234567')
        """
        return f"{self.kind}={int(self.value)}" if self.is_control else f"{self.kind}={self.value:g}"

    @property
    def is_control(self) -> bool:
        return self.kind == RANDOM_ROWS

    def overrides(self) -> list[str]:
        """
        >>> Branch(THRESHOLD, 0.5).overrides()
        ['filter.top_fraction=null', 'filter.threshold=0.5']
        """
        reset = [f"filter.{TOP_FRACTION}=null"] if self.kind != TOP_FRACTION else []
        return [*reset, f"filter.{self.kind}={int(self.value) if self.is_control else self.value!r}"]


def plan(cfg: PipelineConfig, thresholds: Sequence[float] = (), top_fractions: Sequence[float] = ()) -> list[Branch]:
    """The branches: the settings asked for, plus the config's own, in order.

    >>> cfg = validate_config({"ingest": {"sources": [{"path": "x"}]}, "train": {"max_steps": 5}})
    >>> [b.name for b in plan(cfg, [0.9, 0.5])]
    ['threshold=0.5', 'threshold=0.7', 'threshold=0.9']
    """
    if cfg.train.max_steps <= 0:
        raise ConfigError("sweep: set a training budget identical for every branch, e.g. --set train.max_steps=10")
    if cfg.filter.random_rows is not None:
        raise ConfigError("sweep: filter.random_rows is set; a sweep compares quality filter settings (it adds "
                          "random controls itself with --random-control)")
    current = Branch(TOP_FRACTION, cfg.filter.top_fraction, True) if cfg.filter.top_fraction is not None \
        else Branch(THRESHOLD, cfg.filter.threshold, True)
    asked = {Branch(THRESHOLD, float(v)) for v in thresholds} | {Branch(TOP_FRACTION, float(v)) for v in top_fractions}
    if not asked:
        raise ConfigError("sweep: name at least one setting (--thresholds 0.5,0.7,0.9 or --top-fractions 0.5,0.8)")
    branches = {(b.kind, b.value): b for b in asked}
    branches[(current.kind, current.value)] = current
    return sorted(branches.values(), key=lambda b: (b.kind, b.value))


def controls(branches: Sequence[Branch], rows_kept: dict[str, int]) -> dict[str, Branch]:
    """Each setting's random control: as many rows as the setting keeps (``rows_kept`` by branch name), drawn
    at random from every scored row; settings that keep the same number of rows share one. A setting that keeps
    no row has none.

    >>> c = controls([Branch(THRESHOLD, 0.5), Branch(THRESHOLD, 0.7, True), Branch(THRESHOLD, 1.0)],
    ...              {"threshold=0.5": 40, "threshold=0.7": 25, "threshold=1": 0})
    >>> {name: b.name for name, b in c.items()}
    {'threshold=0.5': 'random_rows=40', 'threshold=0.7': 'random_rows=25'}
    """
    return {b.name: Branch(RANDOM_ROWS, int(rows_kept[b.name])) for b in branches
            if not b.is_control and rows_kept.get(b.name, 0) > 0}


def against_random(entry: dict | None) -> str:
    """What the paired comparison of a setting with its random control (setting minus control, on the primary
    metric) says: beats random, worse than random, indistinguishable from random, or not measured.

    >>> against_random({"verdict": "better"}), against_random({"verdict": "no significant change"})
    ('beats random', 'indistinguishable from random')
    >>> against_random({"verdict": "worse"}), against_random(None)
    ('worse than random', 'not measured')
    """
    return AGAINST_RANDOM.get((entry or {}).get("verdict"), UNMEASURED)


def derive(cfg: PipelineConfig, overrides: Sequence[str]) -> PipelineConfig:
    """``cfg`` with ``key.sub=value`` overrides applied and validated (one ConfigError line if bad)."""
    from sft_pipeline.config import apply_override, parse_override

    tree = cfg.model_dump(mode="json")
    for item in overrides:
        apply_override(tree, *parse_override(item))
    return validate_config(tree, "sweep")


def heldout_config(cfg: PipelineConfig) -> PipelineConfig:
    """The config whose tokenize stage draws the sweep's held-out set from every scored row, before filtering.
    The sweep hands that stage the rows any branch trains on (``sft_pipeline.sweep_rows``) to decontaminate the
    held-out rows against. Its held-out cap is the branches': a row among the first ``max_heldout_rows``
    candidates of all rows is among the first of any subset, so no branch trains on it.

    >>> c = validate_config({"ingest": {"sources": [{"path": "x"}]}, "tokenize": {"max_rows": 10}})
    >>> h = heldout_config(c)
    >>> h.filter.threshold, h.filter.top_fraction, h.tokenize.max_rows
    (0.0, None, 10)
    """
    return derive(cfg, [f"filter.{TOP_FRACTION}=null", f"filter.{THRESHOLD}=0.0"])


@dataclass
class BranchRow:
    """What the report shows of one branch."""

    branch: Branch
    rows_kept: int
    tokens_kept: int
    verdict: str | None  # the gate's, against the base model
    metrics: dict[str, dict] = field(default_factory=dict)  # metric -> {"tuned", "tuned_low", "tuned_high", ...}
    versus_base: dict[str, dict] = field(default_factory=dict)  # metric -> comparison entry
    versus_current: dict[str, dict] = field(default_factory=dict)
    control: Branch | None = None  # its random control, when the sweep has them
    versus_control: dict[str, dict] = field(default_factory=dict)  # metric -> this branch minus its control


@dataclass
class Recommendation:
    best: Branch | None
    indistinguishable: list[Branch]
    sentence: str


def recommend(rows: Sequence[BranchRow], primary: str, direction: int,
              interval: Callable[[BranchRow, BranchRow], tuple[float, float] | None]) -> Recommendation:
    """The best primary metric among the branches the gate does not reject, stated with its uncertainty.

    ``interval(a, b)`` is the 95 % interval of ``b - a`` on the primary metric (paired).
    """
    eligible = [r for r in rows if r.verdict != NOT_PROMOTED and not r.branch.is_control
                and r.metrics.get(primary, {}).get("tuned") is not None]
    if not eligible:
        return Recommendation(None, [], "No setting is recommended: the gate rejects every branch at this budget.")
    best = BETTER_IS[direction](eligible, key=lambda r: r.metrics[primary]["tuned"])
    tied = [r.branch for r in eligible if r is not best and _straddles(interval(best, r))]
    sentence = f"Recommended: {best.branch.name} (best {primary} among the branches the gate does not reject)."
    if tied:
        names = ", ".join(b.name for b in tied)
        sentence += f" {best.branch.name} and {names} are indistinguishable at this budget (95 % paired intervals)."
    return Recommendation(best.branch, tied, sentence)


def _straddles(bounds: tuple[float, float] | None) -> bool:
    """An interval that contains 0 (or none at all: nothing tells the two apart)."""
    return bounds is None or bounds[0] <= 0 <= bounds[1]


def read_results(evaluate_dir: Path) -> dict:
    from sft_pipeline.constants import EVAL_RESULTS_FILE

    return json.loads((Path(evaluate_dir) / EVAL_RESULTS_FILE).read_text())


def apply(config_path: str | Path, overrides: Sequence[str]) -> Path:
    """Write ``<config>.recommended.yaml``: the config file with the recommended filter setting applied."""
    import yaml

    from sft_pipeline.config import apply_override, parse_override

    source = Path(config_path)
    tree = yaml.safe_load(source.read_text()) or {}
    for item in overrides:
        apply_override(tree, *parse_override(item))
    target = source.with_name(f"{source.stem}.recommended.yaml")
    target.write_text(f"# {source.name} with the filter setting recommended by `sft-pipeline sweep`\n"
                      + yaml.safe_dump(tree, sort_keys=False))
    return target
