"""Run report: Markdown (plots embedded as data: URIs at its end) and self-contained, sanitised HTML.

At evaluation time :func:`write_run_file` snapshots what the report needs from the
upstream stage folders (manifest summaries, threshold sweep, training loss log) into
``run.json`` and copies their PNGs next to it; :func:`render_report` then renders
from that folder alone, so a report can be rendered again after the stage folders
are gone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sft_pipeline import constants, stages
from sft_pipeline.artifacts import read_manifest
from sft_pipeline.errors import InputError
from sft_pipeline.files import write_json
from sft_pipeline.report.html import data_uri, markdown_to_html
from sft_pipeline.report.markdown import IMAGES, build_markdown, comparison
from sft_pipeline.report.plots import delta_plot, loss_curve

MANIFEST_FIELDS = ("key", "config", "duration_s")
SHOWN = ("counts", "method", "verdict", "details")  # what a stage table shows of a manifest, merged


def extract_loss_log(obj: Any) -> list[tuple[float, float]]:
    """Find a per-step training loss log in a metrics JSON of unknown shape.

    >>> extract_loss_log({"log_history": [{"step": 1, "loss": 2.5}, {"step": 2, "train_runtime": 3.0},
    ...                                   {"step": 3, "loss": 2.0}]})
    [(1, 2.5), (3, 2.0)]
    >>> extract_loss_log({"loss": [3.0, 2.0]}), extract_loss_log({"final_loss": 1.0})
    ([(1, 3.0), (2, 2.0)], [])
    """
    if isinstance(obj, dict):
        losses = obj.get("loss")
        if isinstance(losses, list) and losses and all(isinstance(x, (int, float)) for x in losses):
            return [(i + 1, float(x)) for i, x in enumerate(losses)]
        for value in obj.values():
            found = extract_loss_log(value)
            if found:
                return found
    if isinstance(obj, list) and any(isinstance(e, dict) and "loss" in e for e in obj):
        rows = [e for e in obj if isinstance(e, dict) and isinstance(e.get("loss"), (int, float))]
        return [(r.get("step", i + 1), float(r["loss"])) for i, r in enumerate(rows)]
    return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stage_summary(stage_dir: Path) -> dict | None:
    if not (stage_dir / constants.MANIFEST_FILE).exists():
        return None
    manifest = read_manifest(stage_dir)
    shown = {}
    for name in SHOWN:
        value = manifest.get(name)
        shown.update(value if isinstance(value, dict) else {} if value is None else {name: value})
    return {**{k: manifest.get(k) for k in MANIFEST_FIELDS}, "counts": shown}


def _copy_if_exists(src: Path, dst_dir: Path) -> bool:
    if src.is_file():
        shutil.copyfile(src, dst_dir / src.name)
        return True
    return False


def write_run_file(out_dir: Path, stage_dirs: dict[str, Path]) -> dict:
    """Snapshot the upstream stages into ``run.json`` and copy their plots into ``out_dir``."""
    train_dir, filter_dir = stage_dirs.get(constants.STAGE_TRAIN), stage_dirs.get(constants.STAGE_FILTER)
    train_metrics = _read_json(train_dir / constants.METRICS_FILE) if train_dir else None
    loss_log = extract_loss_log(train_metrics) if train_metrics is not None else []
    run = {
        "stage_dirs": {k: str(Path(v).resolve()) for k, v in stage_dirs.items()},
        "stages": {k: _stage_summary(Path(stage_dirs[k])) for k in stages.NAMES[:-1] if k in stage_dirs},
        "sweep": _read_json(filter_dir / constants.SWEEP_FILE) if filter_dir else None,
        "train_metrics": {k: v for k, v in (train_metrics or {}).items() if isinstance(v, (int, float, str))},
        "train_loss": loss_log,
    }
    if filter_dir:
        _copy_if_exists(filter_dir / constants.HISTOGRAM_FILE, out_dir)
    if not (train_dir and _copy_if_exists(train_dir / constants.LOSS_CURVE_FILE, out_dir)) and loss_log:
        loss_curve([s for s, _ in loss_log], [v for _, v in loss_log], out_dir / constants.LOSS_CURVE_FILE)
    write_json(out_dir / constants.RUN_FILE, run)
    return run


def find_run_dir(path: Path) -> Path:
    """``path`` itself when it holds a run, else the newest evaluate stage folder below it."""
    if (path / constants.EVAL_RESULTS_FILE).exists():
        return path
    pattern = f"**/{constants.STAGE_EVALUATE}/*/{constants.EVAL_RESULTS_FILE}"
    found = sorted(path.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise InputError(f"{path}: no {constants.EVAL_RESULTS_FILE} here nor in an evaluate stage folder below")
    return found[-1].parent


def render_report(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re-)render ``report.md`` and ``report.html`` from a run folder's saved results."""
    run_dir = find_run_dir(Path(run_dir))
    results = _read_json(run_dir / constants.EVAL_RESULTS_FILE)
    if not isinstance(results, dict) or "metrics" not in results:
        raise InputError(f"{run_dir / constants.EVAL_RESULTS_FILE}: not an evaluation result file")
    run = _read_json(run_dir / constants.RUN_FILE) or {}
    delta_plot(comparison(results), run_dir / constants.METRIC_DELTAS_FILE)
    images = {name: data_uri(run_dir / name) for name in IMAGES if (run_dir / name).exists()}
    text = build_markdown(results, run, images)
    md_path, html_path = run_dir / constants.REPORT_MD_FILE, run_dir / constants.REPORT_HTML_FILE
    md_path.write_text(text, encoding="utf-8")
    html_path.write_text(markdown_to_html(text), encoding="utf-8")
    return md_path, html_path
