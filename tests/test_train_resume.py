"""Kill a training process (SIGKILL) or fail it after a checkpoint exists; the re-run resumes from it and
publishes what the uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig
from sft_pipeline.train import TrainJob
from sft_pipeline.train.resume import COMPLETE_MARKER, latest_complete_checkpoint, saved_step
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 8
SAVE_STEPS = 2
STEP_DELAY_S = 0.5  # slows the child so that it is killed mid-run
WAIT_LIMIT_S = 240

CHILD = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from sft_pipeline.config import ModelConfig, TrainConfig
from sft_pipeline.train import TrainJob
from sft_pipeline.train.trainer import train_model

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(sys.argv[4]))

model, tokenized, out, delay, cfg = sys.argv[1:6]
job = TrainJob(ModelConfig(name_or_path=model), TrainConfig.model_validate_json(cfg), Path(tokenized), Path(out),
               seed=0)
train_model(job, callbacks=[Slow()])
"""


@pytest.fixture(scope="module")
def tokenized(tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(32), 64), folder / constants.TRAIN_TOKENS_FILE)
    return folder


def _start_child(model_dir: Path, tokenized: Path, out: Path, cfg: TrainConfig, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = [sys.executable, "-c", CHILD, str(model_dir), str(tokenized), str(out), str(STEP_DELAY_S),
            cfg.model_dump_json()]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, log: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while latest_complete_checkpoint(ckpt_dir) is None:
        if proc.poll() is not None:
            pytest.fail(f"training child exited early ({proc.returncode}):\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.05)


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, tokenized, tmp_path):
    cfg = TrainConfig(method="lora", max_steps=TOTAL_STEPS, save_steps=SAVE_STEPS, batch_size=2,
                      gradient_accumulation=1, learning_rate=1e-3, warmup_ratio=0.0)
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    out = tmp_path / "killed"
    ckpt_dir = out / constants.CHECKPOINTS_DIR

    child = _start_child(tiny_model_dir, tokenized, out, cfg, tmp_path / "child.log")
    _wait_for_checkpoint(child, ckpt_dir, tmp_path / "child.log")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / constants.ADAPTER_DIR).exists(), "the child must die before finishing"
    killed_at = saved_step(latest_complete_checkpoint(ckpt_dir))
    assert 0 < killed_at < TOTAL_STEPS

    # What a kill during a save leaves behind: a newer checkpoint folder without the marker.
    partial = ckpt_dir / f"checkpoint-{killed_at + SAVE_STEPS}"
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")

    resumed = train_model(TrainJob(model_cfg, cfg, tokenized, out, seed=0))
    reference = train_model(TrainJob(model_cfg, cfg, tokenized, tmp_path / "reference", seed=0))

    assert resumed["resumed_from_step"] == killed_at
    assert reference["resumed_from_step"] is None
    assert resumed["steps"] == reference["steps"] == TOTAL_STEPS
    assert (partial / COMPLETE_MARKER).is_file() or not partial.exists(), "the partial checkpoint was replaced"
    curve = json.loads((out / constants.METRICS_FILE).read_text())["loss"]
    assert [entry["step"] for entry in curve] == list(range(1, TOTAL_STEPS + 1)), "loss curve spans both runs"
    assert resumed["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-4)


class FailAtStep(TrainerCallback):
    """Stop the run with an error when it is about to take step ``step`` (a checkpoint exists by then)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise InjectedFailure(f"injected at step {self.step}")


class InjectedFailure(RuntimeError):
    pass


def test_resumed_qlora_run_publishes_the_uninterrupted_adapter_byte_for_byte(tiny_model_dir, tokenized, tmp_path):
    # QLoRA as the tiny config trains it: TRL keeps the adapter in bf16, and the checkpoint load upcast it to fp32,
    # so the resumed run trained at another precision (losses from step 3 in the fifth decimal, weights ~1e-3).
    cfg = TrainConfig(method="qlora", max_steps=4, save_steps=SAVE_STEPS, batch_size=2, gradient_accumulation=2,
                      learning_rate=1e-3, warmup_ratio=0.0)
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    reference = train_model(TrainJob(model_cfg, cfg, tokenized, tmp_path / "reference", seed=0))
    out = tmp_path / "stopped"
    with pytest.raises(InjectedFailure):
        train_model(TrainJob(model_cfg, cfg, tokenized, out, seed=0), callbacks=[FailAtStep(SAVE_STEPS + 1)])
    resumed = train_model(TrainJob(model_cfg, cfg, tokenized, out, seed=0))

    assert resumed["resumed_from_step"] == SAVE_STEPS and reference["resumed_from_step"] is None
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / constants.ADAPTER_DIR / name).read_bytes() == \
            (tmp_path / "reference" / constants.ADAPTER_DIR / name).read_bytes(), name
    assert _curve(out) == _curve(tmp_path / "reference")


def _curve(folder: Path) -> list[tuple]:
    curve = json.loads((folder / constants.METRICS_FILE).read_text())["loss"]
    return [(entry["step"], entry["loss"], entry["grad_norm"]) for entry in curve]
