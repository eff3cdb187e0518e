"""Experiment tracking: one MLflow run per pipeline run (parameters, stage counts, evaluation metrics).

:func:`log_pipeline_run` is called by the flow once the stages are done; it talks to the
tracking store named by ``run.tracking_uri`` (a local ``sqlite:///runs/mlflow.db`` or
``file:`` store, or a tracking server) through ``MlflowClient``, without touching MLflow's
process-wide active run. Training curves are logged by the trainer itself
(``train.report_to``, see :mod:`sft_pipeline.train.reporting`).

A tracker never costs a run: :func:`store_problem` checks the store once before it is used (one
connection with a short timeout, or whether a sqlite file's folder takes writes), MLflow's own
HTTP retries are bounded (:func:`bound_http_retries`), and a store that is down, or fails while
logging, is a warning: the run goes on and its results stand (:func:`log_if_possible`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from sft_pipeline.config import PipelineConfig
from sft_pipeline.errors import ConfigError, first_line

EXPERIMENT_NAME = "sft-pipeline"  # MLflow experiment that holds every pipeline run
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
MAX_KEY_CHARS = 250  # MLflow's limit on a parameter or metric name
PARAMS_PER_BATCH = 100  # MLflow's limit on parameters per log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch call
UNSAFE_KEY_CHARS = re.compile(r"[^\w\-. /:]")  # what MLflow refuses in a name
TAG_SOURCE = "sft_pipeline.source"
REACH_TIMEOUT_S = 3.0  # the one connection attempt to a tracking server before a run uses it
HTTP_SCHEMES = {"http": 80, "https": 443}  # -> default port
SQLITE_SCHEME = "sqlite"
# MLflow retries a refused connection for minutes by default (7 retries, backoff 2, 120 s timeout): bounded,
# unless set in the environment.
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

log = logging.getLogger(__name__)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; lists as JSON; every value a string of at most MAX_PARAM_CHARS.

    >>> flatten({"train": {"lora": {"r": 16}, "method": "qlora"}, "ingest": {"sources": [{"path": "a.jsonl"}]}})
    {'train.lora.r': '16', 'train.method': 'qlora', 'ingest.sources': '[{"path": "a.jsonl"}]'}
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def metric_name(stage: str, name: str) -> str:
    """``stage/name`` with the characters MLflow refuses replaced.

    >>> metric_name("evaluate", "ifeval_loose (delta)"), metric_name("train", "final_loss")
    ('evaluate/ifeval_loose _delta_', 'train/final_loss')
    """
    return UNSAFE_KEY_CHARS.sub("_", f"{stage}/{name}")[:MAX_KEY_CHARS]


def numeric(value: Any) -> float | None:
    """``value`` as a finite float for MLflow, or None when it is not a number (text, None, NaN).

    >>> numeric(3), numeric(True), numeric(0.5), numeric("x"), numeric(None), numeric(float("nan"))
    (3.0, 1.0, 0.5, None, None, None)
    """
    if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def stage_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Every numeric value of every stage's results, as ``stage/name`` metrics (others are skipped).

    >>> stage_metrics({"ingest": {"rows_read": 10, "verdict": "ok"}, "evaluate": {"tuned/loss": 1.5}})
    {'ingest/rows_read': 10.0, 'evaluate/tuned/loss': 1.5}
    """
    out = {}
    for stage, values in results.items():
        for name, value in values.items():
            if (number := numeric(value)) is not None:
                out[metric_name(stage, name)] = number
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def bound_http_retries() -> None:
    """Bound MLflow's HTTP retries and timeout in this process (values already in the environment win)."""
    for name, value in MLFLOW_HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (SQLAlchemy's spelling), None for an in-memory one.

    >>> sqlite_path("sqlite:///runs/mlflow.db"), sqlite_path("sqlite:////tmp/m.db"), sqlite_path("sqlite://")
    (PosixPath('runs/mlflow.db'), PosixPath('/tmp/m.db'), None)
    """
    path = urlsplit(uri).path[1:]
    return Path(path) if path and path != ":memory:" else None


def _server_problem(host: str, port: int, timeout: float) -> str | None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return None


def _sqlite_problem(db: Path) -> str | None:
    """Whether sqlite can write ``db``: the file (if any) opens for writing and the nearest existing folder
    takes a new file (sqlite's journal), tried for real rather than by permission bits (root ignores those)."""
    folder = next(f for f in db.absolute().parents if f.exists())
    try:
        if db.exists():
            db.open("r+b").close()
    except OSError as exc:
        return f"{db} does not open for writing ({exc.strerror or exc})"
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return f"{folder} takes no new file ({exc.strerror or exc})"
    return None


def store_problem(tracking_uri: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why the tracking store at ``tracking_uri`` cannot be used now, in a few words; None when a quick check
    finds nothing wrong (a server that accepts a connection, a sqlite file that takes writes; other schemes are
    not checked).

    >>> store_problem("sqlite:////proc/no-such-folder/mlflow.db") is not None
    True
    """
    parts = urlsplit(tracking_uri)
    if parts.scheme in HTTP_SCHEMES:
        return _server_problem(parts.hostname or "localhost", parts.port or HTTP_SCHEMES[parts.scheme], timeout)
    if parts.scheme == SQLITE_SCHEME and (db := sqlite_path(tracking_uri)) is not None:
        return _sqlite_problem(db)
    return None


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    if not tracking_uri:
        raise ConfigError("run.tracking_uri: not set; experiment tracking needs a store, e.g. sqlite:///runs/mlflow.db")
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _log_batches(client, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric, Param

    for chunk in _chunks([Param(k[:MAX_KEY_CHARS], v) for k, v in sorted(params.items())], PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
    for chunk in _chunks(entries, METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)


def log_pipeline_run(cfg: PipelineConfig, results: Mapping[str, Mapping[str, Any]], run_name: str, *,
                     tags: Mapping[str, str] | None = None) -> str:
    """Log one pipeline run to MLflow at ``cfg.run.tracking_uri``; return its run id.

    Parameters: the whole config, flattened to dotted keys (``train.lora.r``). Metrics:
    every numeric value in ``results`` (stage name -> that stage's counts or metrics),
    as ``stage/name``. The run ends FINISHED, or FAILED if logging broke off.
    """
    client = _client(cfg.run.tracking_uri)
    run = client.create_run(_experiment_id(client, EXPERIMENT_NAME), run_name=run_name,
                            tags={TAG_SOURCE: "log_pipeline_run", **(tags or {})})
    run_id = run.info.run_id
    try:
        _log_batches(client, run_id, flatten(cfg.model_dump(mode="json")), stage_metrics(results))
    except BaseException:
        try:
            client.set_terminated(run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001 - the first error is the one to report
            log.debug("could not mark MLflow run %s failed: %s", run_id, exc)
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def log_if_possible(cfg: PipelineConfig, results: Mapping[str, Mapping[str, Any]], run_name: str) -> str | None:
    """:func:`log_pipeline_run` when the store can be used; otherwise, or when logging fails, one warning and
    None: the pipeline's work is done and stands."""
    uri = cfg.run.tracking_uri
    bound_http_retries()
    if (problem := store_problem(uri)) is not None:
        log.warning("not logged to MLflow at %s: %s; the run's results stand", uri, problem)
        return None
    try:
        return log_pipeline_run(cfg, results, run_name)
    except Exception as exc:  # noqa: BLE001 - a tracker never fails a finished run
        log.warning("not logged to MLflow at %s: %s; the run's results stand", uri, first_line(exc))
        return None


def read_run(tracking_uri: str, run_id: str) -> tuple[dict[str, str], dict[str, float], str]:
    """A logged run's parameters, latest metrics and status, read back from the store."""
    run = _client(tracking_uri).get_run(run_id)
    return dict(run.data.params), dict(run.data.metrics), run.info.status

