"""Checkpoints that survive a killed process: only COMPLETE ones are ever resumed from.

HF ``Trainer`` writes ``checkpoint-<step>/`` piece by piece (weights, optimizer,
scheduler, RNG, ``trainer_state.json``) and then fires ``on_save``. A process killed
in between leaves a half-written folder that ``get_last_checkpoint`` would happily
pick. :class:`CompleteMarker` writes a small marker file (atomically) from
``on_save``; a checkpoint without it is incomplete and is deleted before resuming.
:class:`CheckpointMirror` and :func:`pull_latest` carry complete checkpoints through
an fsspec URL to a retry on another machine.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sft_pipeline import storage
from sft_pipeline.files import write_json
from sft_pipeline.train.ranks import barrier

log = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"


def checkpoint_step(path: str | Path) -> int | None:
    """The global step encoded in a checkpoint folder name, or None for other names.

    >>> checkpoint_step("out/checkpoint-12"), checkpoint_step("out/adapter"), checkpoint_step("checkpoint-x")
    (12, None, None)
    """
    name = Path(path).name
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    if not name.startswith(prefix) or not name[len(prefix):].isdigit():
        return None
    return int(name[len(prefix):])


def saved_folder(args, state) -> Path:
    """The checkpoint folder the Trainer has just written (in ``on_save``)."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / TRAINER_STATE).is_file()


def checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """All checkpoint folders under ``ckpt_dir``, by step."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_complete_checkpoint(ckpt_dir: str | Path) -> Path | None:
    done = [p for p in checkpoints(ckpt_dir) if is_complete(p)]
    return done[-1] if done else None


def remove_incomplete(ckpt_dir: str | Path) -> list[str]:
    """Delete checkpoints a killed process left half-written; return their names."""
    removed = []
    for path in checkpoints(ckpt_dir):
        if not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def saved_step(checkpoint: Path) -> int:
    """The global step recorded in a checkpoint's trainer state."""
    return int(json.loads((checkpoint / TRAINER_STATE).read_text())["global_step"])


class CompleteMarker(TrainerCallback):
    """Mark each checkpoint complete once the Trainer has finished writing it."""

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank has written its part (RNG state, FSDP shards) before the marker
        if state.is_world_process_zero:
            folder = saved_folder(args, state)
            if folder.is_dir():
                write_json(folder / COMPLETE_MARKER, {"global_step": state.global_step})
        return control


class CheckpointMirror(TrainerCallback):
    """Upload each complete checkpoint to ``url`` (marker last), then drop the older ones there.

    With stage outputs on an fsspec URL, a retry on another machine resumes from the
    mirrored checkpoint (:func:`pull_latest`) instead of step 0. Runs after
    :class:`CompleteMarker` (callbacks run in order), on rank 0 only.
    """

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def on_save(self, args, state, control, **kwargs):
        folder = saved_folder(args, state)
        if state.is_world_process_zero and is_complete(folder):
            try:
                self.push(folder)
            except Exception as exc:  # noqa: BLE001 - a failed upload must not end the training run
                log.warning("could not upload %s to %s (retried at the next save): %s", folder.name, self.url, exc)
        return control

    def push(self, folder: Path) -> None:
        storage.push_folder(folder, f"{self.url}/{folder.name}", last=COMPLETE_MARKER)
        step = checkpoint_step(folder)
        for name in storage.subfolders(self.url):
            other = checkpoint_step(name)
            if other is not None and other < step:  # older ones only: never another attempt's newer one
                storage.remove_url(f"{self.url}/{name}")


def pull_latest(url: str, ckpt_dir: str | Path) -> int | None:
    """Download the newest complete checkpoint mirrored at ``url`` into ``ckpt_dir``, unless a
    local complete one is as new; return the step downloaded (None: nothing newer there)."""
    ckpt_dir, url = Path(ckpt_dir), url.rstrip("/")
    local = latest_complete_checkpoint(ckpt_dir)
    have = checkpoint_step(local) if local else -1
    remote = sorted((n for n in storage.subfolders(url) if checkpoint_step(n) is not None), key=checkpoint_step)
    for name in reversed(remote):
        if checkpoint_step(name) <= have:
            return None
        if storage.exists(f"{url}/{name}/{COMPLETE_MARKER}"):
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)  # an incomplete local copy
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            if storage.pull_folder(f"{url}/{name}", ckpt_dir / name, last=COMPLETE_MARKER):
                return checkpoint_step(name)
    return None
