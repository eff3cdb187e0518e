"""Which stage folders hold one run's outputs: found from a config's cache keys, or from a folder on disk.

* From a config (the default): each stage's key computed as ``sft_pipeline.cache`` computes it, stage after
  stage, so the folders are exactly the ones ``sft-pipeline run`` with that config uses; the chain stops at
  the first stage that has no complete output yet.
* From ``--run DIR``: an evaluate folder's ``run.json`` (it lists its stage folders), one stage folder, or an
  output root (its newest stage folder, by its manifest's time). From a stage folder the others are linked by
  content: an upstream folder is the one whose recorded file digest is the input digest in the manifest, a
  downstream folder one whose manifest records this folder's file digest as its input (the newest, when
  several do). Folders of different runs are never mixed, whatever their dates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from sft_pipeline import constants, stages
from sft_pipeline.artifacts import read_manifest
from sft_pipeline.errors import InputError
from sft_pipeline.stages import StageResult

TRACED = (constants.STAGE_INGEST, constants.STAGE_SCORE, constants.STAGE_FILTER, constants.STAGE_TOKENIZE,
          constants.STAGE_TRAIN)  # the stages a row passes through
StageDirs = dict[str, Path]


def from_config(cfg) -> StageDirs:
    """The stage folders this config's run uses, through the last stage whose output is complete."""
    from sft_pipeline import cache

    results: dict[str, StageResult] = {}
    for name in TRACED:
        stage = stages.get(name)
        found = cache.complete_output(stage, cfg, cache.key(stage, cfg, results))
        if found is None:
            break
        results[name] = found
    if not results:
        raise InputError(f"no stored ingest output for this config under {cfg.run.output_dir}: run "
                         f"`sft-pipeline run` with it first (--until tokenize is enough), or name a run folder "
                         f"with --run")
    return {name: cache.output_folder(cfg, result) for name, result in results.items()}


def from_run_dir(path: str | Path) -> StageDirs:
    """The stage folders of the run at ``path`` (an evaluate folder, a stage folder or an output root)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such run folder")
    if (path / constants.RUN_FILE).is_file():
        return _listed(path / constants.RUN_FILE)
    if (path / constants.MANIFEST_FILE).is_file():
        return linked(path)
    newest = max(_stage_folders(path), key=lambda f: (f / constants.MANIFEST_FILE).stat().st_mtime, default=None)
    if newest is None:
        raise InputError(f"{path}: not a run: no run.json, manifest.json or <stage>/<key>/manifest.json here")
    return from_run_dir(newest)


def _listed(run_file: Path) -> StageDirs:
    try:
        listed = json.loads(run_file.read_text())["stage_dirs"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{run_file}: not a run file with stage_dirs") from None
    dirs = {name: Path(listed[name]) for name in TRACED if name in listed}
    missing = [str(d) for d in dirs.values() if not (d / constants.MANIFEST_FILE).is_file()]
    if missing:
        raise InputError(f"{run_file}: its stage folder {missing[0]} is gone")
    return dirs


def _stage_folders(root: Path, names=stages.NAMES) -> Iterator[Path]:
    for name in names:
        for manifest in sorted(root.glob(f"{name}/*/{constants.MANIFEST_FILE}")):
            yield manifest.parent


def _result(folder: Path) -> StageResult | None:
    from sft_pipeline.cache import result_of

    try:
        return result_of(read_manifest(folder), folder, None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _inputs(folder: Path) -> dict:
    try:
        return read_manifest(folder).get("inputs", {})
    except (OSError, ValueError):
        return {}


def _digest(result: StageResult, name: str) -> str | None:
    try:
        return result.digest(name)
    except KeyError:
        return None


def _newest(folders: list[Path]) -> Path | None:
    return max(folders, key=lambda f: (f / constants.MANIFEST_FILE).stat().st_mtime, default=None)


def linked(folder: Path) -> StageDirs:
    """The traced stages' folders linked by content to the stage folder ``folder`` (see the module's doc)."""
    start = _result(folder)
    if start is None or start.stage not in stages.NAMES:
        raise InputError(f"{folder}: its manifest.json is not a stage manifest")
    if start.stage == constants.STAGE_EVALUATE and (folder / constants.RUN_FILE).is_file():
        return _listed(folder / constants.RUN_FILE)
    root, found = folder.parent.parent, {start.stage: folder}
    for name in reversed(stages.NAMES):  # upstream: each stage's inputs name the digests of what it read
        if name in found:
            _link_up(root, name, found)
    for name in TRACED:  # downstream: the newest folder that read this run's files
        if name not in found:
            match = _link_down(root, name, found)
            if match is not None:
                found[name] = match
    return {name: found[name] for name in TRACED if name in found}


def _link_up(root: Path, name: str, found: dict[str, Path]) -> None:
    wanted = _inputs(found[name])
    for up, files in stages.get(name).reads.items():
        key = f"{up}/{files[0]}" if files else None
        if up in found or key not in wanted:
            continue
        matches = [f for f in _stage_folders(root, (up,))
                   if (r := _result(f)) is not None and _digest(r, files[0]) == wanted[key]]
        if matches:
            found[up] = _newest(matches)


def _link_down(root: Path, name: str, found: dict[str, Path]) -> Path | None:
    needs = {f"{up}/{files[0]}": _digest(_result(found[up]), files[0])
             for up, files in stages.get(name).reads.items() if files and up in found}
    if not needs:
        return None
    matches = [f for f in _stage_folders(root, (name,))
               if all(_inputs(f).get(k) == v for k, v in needs.items())]
    return _newest(matches)
