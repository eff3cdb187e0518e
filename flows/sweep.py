"""The `sft-sweep` flow: filter -> tokenize -> train -> evaluate for each filter setting, compared.

Ingest, score, the shared held-out set and the base model's evaluation on it run once; the held-out
set is drawn after every branch's filter, and decontaminated against the rows the branches train on
(``sft_pipeline.sweep_rows``). Each
branch stage is the same cached task as in `sft`, so a re-run with one more setting trains only
that branch (if it changes the union of rows the branches train on, the shared held-out set, the
baseline and every evaluation are redone), and branches whose filters keep the same rows share
one tokenize/train/evaluate output. Branches of one stage are submitted together, so data stages
run in parallel where the task runner has room; model stages run one at a time in this process,
and with ``train.work_pool`` set every branch's training goes to `sft-train/<pool>` at once,
under the GPU concurrency limit, as in `sft`. With ``random_control``, the random controls
(``sweep.controls``) are branches too, added once the settings' filters have counted their rows.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.logs import library_logs
from flows.sft import DEFAULT_CONFIG, run_stage, submit_stage
from sft_pipeline import cache, stages, sweep, sweep_rows
from sft_pipeline.config import load_config
from sft_pipeline.constants import (STAGE_BASELINE, STAGE_EVALUATE, STAGE_FILTER, STAGE_SCORE,
                                    STAGE_SWEEP_TRAIN_IDS, STAGE_TOKENIZE, STAGE_TRAIN)
from sft_pipeline.stages import StageResult

SWEEP_FLOW = "sft-sweep"
BRANCH_STAGES = (STAGE_TOKENIZE, STAGE_TRAIN, STAGE_EVALUATE)  # after each branch's filter and the held-out set
MODEL_STAGES = (STAGE_TRAIN, STAGE_EVALUATE)


@flow(name=SWEEP_FLOW)
def sft_sweep(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, thresholds: list[float] | None = None,
              top_fractions: list[float] | None = None, command: str = "", random_control: bool = False) -> dict:
    """Train and evaluate one branch per filter setting (and, with ``random_control``, one per distinct number of
    rows kept, on that many random rows); write the sweep report; return its summary."""
    with library_logs():
        cfg = load_config(config, overrides)
        branches = sweep.plan(cfg, thresholds or [], top_fractions or [])
        shared: dict[str, StageResult] = {}
        for stage in stages.upto(STAGE_SCORE):
            shared[stage.name] = run_stage(stage, cfg, shared)
        configs = {b.name: sweep.derive(cfg, b.overrides()) for b in branches}
        results = {b.name: dict(shared) for b in branches}
        run_branch_stage(stages.get(STAGE_FILTER), cfg, configs, results, {})
        controls = add_controls(cfg, branches, configs, results, shared) if random_control else {}
        branches = [*branches, *{c.name: c for c in controls.values()}.values()]
        trained = branch_train_ids(cfg, {b: results[b][STAGE_FILTER] for b in configs})
        heldout = held_out_set(sweep.heldout_config(cfg), {**shared, STAGE_SWEEP_TRAIN_IDS: trained})
        eval_inputs = {STAGE_TOKENIZE: heldout}  # what every branch is evaluated on, and the base model on it, once
        eval_inputs[STAGE_BASELINE] = run_stage(stages.get(STAGE_BASELINE), cfg, eval_inputs)
        for name in BRANCH_STAGES:
            run_branch_stage(stages.get(name), cfg, configs, results, eval_inputs)
        return report(cfg, branches, results, heldout, command or f"sft-pipeline sweep --config {config}",
                      {name: c.name for name, c in controls.items()})


def add_controls(cfg, branches, configs: dict, results: dict[str, dict], shared: dict) -> dict[str, sweep.Branch]:
    """Each setting's random control (``sweep.controls``), its filter run; every later stage runs on it as on
    any branch (same seed, step budget, held-out set and prompts)."""
    kept = {b.name: int(results[b.name][STAGE_FILTER].counts.get("rows_kept", 0)) for b in branches}
    controls = sweep.controls(branches, kept)
    new = {c.name: sweep.derive(cfg, c.overrides()) for c in controls.values()}
    configs.update(new)
    results.update({name: dict(shared) for name in new})
    run_branch_stage(stages.get(STAGE_FILTER), cfg, new, results, {})
    return controls


def run_branch_stage(stage: stages.Stage, cfg, configs: dict, results: dict[str, dict], eval_inputs: dict) -> None:
    """One stage on every branch: at once where ``concurrent`` allows, else one after another."""
    together, futures = concurrent(stage.name, cfg), {}
    for b in configs:
        futures[b] = submit_stage(stage, configs[b], upstream(stage, results[b], eval_inputs))
        if not together:
            futures[b].wait()
    for b, future in futures.items():
        results[b][stage.name] = future.result()


def concurrent(stage: str, cfg) -> bool:
    """Whether the branches of ``stage`` may run at once: not for model stages in this process
    (transformers' model loading is not thread-safe: two trainings at once failed here), yes for
    trainings handed to the GPU pool, each in a flow run of its own."""
    return stage not in MODEL_STAGES or (stage == STAGE_TRAIN and bool(cfg.train.work_pool))


@task(name=STAGE_SWEEP_TRAIN_IDS)
def branch_train_ids(cfg, filtered: dict[str, StageResult]) -> StageResult:
    """The ids of the rows any branch trains on, from each branch's filter output (cached by their content)."""
    return cache.run(sweep_rows.stage(list(filtered)), cfg, filtered)


def held_out_set(cfg, shared: dict[str, StageResult]) -> StageResult:
    """The tokenize output whose held-out rows every branch is evaluated on: drawn before filtering, and
    decontaminated against the rows any branch trains on (``shared`` holds them)."""
    results = dict(shared)
    results[STAGE_FILTER] = run_stage(stages.get(STAGE_FILTER), cfg, results)
    tokenize = stages.get(STAGE_TOKENIZE)
    return submit_stage(tokenize, cfg, {name: results[name] for name in tokenize.reads_given(results)}).result()


def upstream(stage: stages.Stage, results: dict[str, StageResult], eval_inputs: dict) -> dict[str, StageResult]:
    """The stage's inputs in this branch; evaluation reads the sweep's shared held-out rows and baseline."""
    found = {name: results[name] for name in stage.reads if name in results}
    return {**found, **eval_inputs} if stage.name == STAGE_EVALUATE else found


@task(name="sweep-report")
def report(cfg, branches, results: dict[str, dict[str, StageResult]], heldout: StageResult, command: str,
           controls: dict[str, str] | None = None) -> dict:
    from sft_pipeline import sweep_report

    outcome = sweep_report.build(cfg, branches, results, heldout, command, controls)
    create_markdown_artifact(key="sft-sweep", markdown=outcome["markdown"], description="Filter sweep")
    return outcome["summary"]
