"""A stage output's ``manifest.json``: written last, with the size and digest of every file, and read
(and its shape checked) before the output is served; a manifest of another shape is no manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sft_pipeline.artifacts import file_records, library_versions
from sft_pipeline.constants import CHECKPOINTS_DIR, MANIFEST_FILE
from sft_pipeline.errors import InputError
from sft_pipeline.files import write_json

if TYPE_CHECKING:
    from sft_pipeline.stages import Stage


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    size: int = Field(ge=0)
    sha256: str


class Manifest(BaseModel):
    """What a reader relies on; other keys (inputs, config, libraries, duration) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    stage: str
    key: str
    files: dict[str, FileRecord]
    counts: dict[str, int | float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


def shape_problem(obj: Any) -> str | None:
    """Why ``obj`` (parsed JSON) is not a manifest, in one line; None when it is one.

    >>> shape_problem([])
    'not a manifest (Input should be a valid dictionary or instance of Manifest)'
    >>> shape_problem({"stage": "s", "key": "k", "files": {"f": 5}})
    'not a manifest (files.f: Input should be a valid dictionary or instance of FileRecord)'
    >>> shape_problem({"stage": "s", "key": "k", "files": {}, "counts": "lots"})
    'not a manifest (counts: Input should be a valid dictionary)'
    >>> shape_problem({"stage": "s", "key": "k", "files": {"f": {"size": 1, "sha256": "d"}}}) is None
    True
    """
    try:
        Manifest.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"not a manifest ({where + ': ' if where else ''}{first['msg']})"
    return None


def read(folder: Path) -> tuple[dict | None, str]:
    """The manifest in ``folder`` and "", or None and why there is none usable."""
    try:
        obj = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return None, "no manifest"
    except (OSError, ValueError) as exc:
        return None, f"its manifest cannot be read ({str(exc).splitlines()[0]})"
    if why := shape_problem(obj):
        return None, f"its manifest is {why}"
    return obj, ""


def split_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's summary as counts (numbers only) and details (the rest: a verdict, a method, tables).

    >>> split_summary({"rows": 3, "method": "threshold", "sweep": [1], "ok": True})
    {'counts': {'rows': 3}, 'details': {'method': 'threshold', 'sweep': [1], 'ok': True}}
    """
    counts = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"counts": counts, "details": {k: v for k, v in summary.items() if k not in counts}}


def write(stage: Stage, folder: Path, key: str, digests: Mapping[str, str], config: Any,
          summary: Mapping[str, Any], started: float) -> dict:
    """Write ``manifest.json`` last: key, inputs, config, code version, summary and every file's size and digest."""
    missing = [name for name in stage.writes if not (folder / name).exists()]
    if missing:
        raise InputError(f"{stage.name} stage wrote no {', '.join(missing)} in {folder}")
    manifest = {"stage": stage.name, "key": key, "code_version": stage.code_version, "inputs": dict(digests),
                "config": config, **split_summary(summary), "libraries": library_versions(),
                "duration_s": round(time.time() - started, 3),
                "files": file_records(folder, skip=(MANIFEST_FILE, CHECKPOINTS_DIR))}
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest
