"""Training on two ranks (``accelerate launch``, DDP over gloo on CPU ranks) through the train stage's launcher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft_pipeline import constants
from sft_pipeline.config import load_config
from sft_pipeline.errors import ConfigError, PipelineError
from sft_pipeline.train import launch, train_stage
from sft_pipeline.train.resume import COMPLETE_MARKER
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
SAVE_STEPS = 2
RANKS = 2


def _cfg(model_dir: Path, *extra: str):
    return load_config(REPO / "deployments/configs/tiny.yaml", [
        f"model.name_or_path={model_dir}", "train.method=lora", f"train.max_steps={STEPS}",
        f"train.save_steps={SAVE_STEPS}", "train.batch_size=2", "train.gradient_accumulation=1",
        "train.warmup_ratio=0.0", *extra,
    ])


def _metrics(out: Path) -> dict:
    return json.loads((out / constants.METRICS_FILE).read_text())


@pytest.fixture(scope="module")
def tokenized(tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(32), 64), folder / constants.TRAIN_TOKENS_FILE)
    return folder


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, tokenized, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks") / "train"
    mirror = (out.parent / "mirror").as_uri()  # as with outputs on a URL: rank 0 uploads each checkpoint
    return out, train_stage(_cfg(tiny_model_dir, f"train.num_processes={RANKS}"), tokenized, out,
                                   checkpoint_url=mirror)


def test_two_ranks_train_like_one_process_at_the_same_effective_batch(two_ranks, tiny_model_dir, tokenized, tmp_path):
    out, result = two_ranks
    train_stage(_cfg(tiny_model_dir, "train.batch_size=4"), tokenized, tmp_path / "alone")
    ranked, single = _metrics(out), _metrics(tmp_path / "alone")

    assert result["num_processes"] == RANKS and single["num_processes"] == 1
    assert ranked["effective_batch"] == single["effective_batch"] == 4
    assert result["steps"] == single["steps"] == STEPS
    # Each rank saw its half of every batch: the totals over ranks are the one process's totals.
    assert (ranked["non_pad_tokens"], ranked["supervised_tokens"]) == (single["non_pad_tokens"], single["supervised_tokens"])
    assert [e["step"] for e in ranked["loss"]] == list(range(1, STEPS + 1))
    for a, b in zip(ranked["loss"], single["loss"]):  # gradients averaged over ranks, not summed
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    checkpoint = out / constants.CHECKPOINTS_DIR / f"checkpoint-{SAVE_STEPS}"
    assert (checkpoint / COMPLETE_MARKER).is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert (out.parent / "mirror" / f"checkpoint-{STEPS}" / COMPLETE_MARKER).is_file()
    adapter = load_file(out / constants.ADAPTER_DIR / "adapter_model.safetensors")
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    log = (out / launch.LAUNCH_DIR / "attempt-1.log").read_text()
    assert f"step {STEPS}/{STEPS} loss" in log and ranked["attempts"] == [
        {"micro_batch": 2, "gradient_accumulation": 1, "outcome": "ok"}]


def test_two_ranks_resume_from_the_last_complete_checkpoint(two_ranks, tiny_model_dir, tokenized, tmp_path):
    done, result = two_ranks
    out = tmp_path / "train"
    shutil.copytree(done, out)
    # What a kill after step 3 leaves: checkpoint-2 complete, checkpoint-4 half written, no adapter yet.
    shutil.rmtree(out / constants.ADAPTER_DIR)
    (out / constants.METRICS_FILE).unlink()
    partial = out / constants.CHECKPOINTS_DIR / f"checkpoint-{STEPS}"
    (partial / COMPLETE_MARKER).unlink()

    resumed = train_stage(_cfg(tiny_model_dir, f"train.num_processes={RANKS}"), tokenized, out)

    assert resumed["resumed_from_step"] == SAVE_STEPS and resumed["steps"] == STEPS
    assert resumed["final_loss"] == pytest.approx(result["final_loss"], rel=1e-4)
    assert [e["step"] for e in _metrics(out)["loss"]] == list(range(1, STEPS + 1))


# Loaded by every launched process (PYTHONPATH): makes rank 1 fail inside training, as the test asks.
INJECT = """
import os
if os.environ.get("RANK") == "1" and os.environ.get("SFT_TEST_INJECT"):
    import torch
    from sft_pipeline.train import trainer
    real = trainer.run_attempt

    def run_attempt(job, batch, *args, **kwargs):
        if os.environ["SFT_TEST_INJECT"] == "bug":
            raise ValueError("injected bug on rank 1")
        if batch.micro > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(job, batch, *args, **kwargs)

    trainer.run_attempt = run_attempt
"""


@pytest.fixture
def rank_one_fails(tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(INJECT)
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    return lambda how: monkeypatch.setenv("SFT_TEST_INJECT", how)


def test_out_of_memory_on_one_rank_relaunches_all_with_half_the_micro_batch(rank_one_fails, tiny_model_dir,
                                                                           tokenized, tmp_path):
    rank_one_fails("oom")
    out = tmp_path / "train"
    result = train_stage(_cfg(tiny_model_dir, f"train.num_processes={RANKS}"), tokenized, out)

    assert (result["micro_batch"], result["gradient_accumulation"], result["steps"]) == (1, 2, STEPS)
    metrics = _metrics(out)
    assert [a["outcome"] for a in metrics["attempts"]] == ["oom", "ok"]
    assert metrics["effective_batch"] == 2 * 1 * RANKS
    first = (out / launch.LAUNCH_DIR / "attempt-1.log").read_text()
    assert "rank 1: out of memory at micro-batch 2" in first and "injected" not in (
        out / launch.LAUNCH_DIR / "attempt-2.log").read_text()


def test_an_error_on_one_rank_is_raised_as_that_rank_saw_it(rank_one_fails, tiny_model_dir, tokenized, tmp_path):
    from sft_pipeline.train import is_transient

    rank_one_fails("bug")
    with pytest.raises(RuntimeError) as err:
        train_stage(_cfg(tiny_model_dir, f"train.num_processes={RANKS}"), tokenized, tmp_path / "train")
    assert str(err.value).startswith("train: rank 1 failed: ValueError: injected bug on rank 1")
    assert not is_transient(err.value), "a bug must not be retried, whatever its peers printed"


def test_out_of_memory_at_micro_batch_one_is_one_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    from sft_pipeline.train import ranks
    from sft_pipeline.train.failures import RankOutOfMemory

    def always_out_of_memory(argv, log_path):
        log_path.write_text("rank 0: out of memory\n")
        ranks.report_failure(log_path.parent, RankOutOfMemory("out of memory at micro-batch 1"))
        return launch.OOM_EXIT_CODE

    monkeypatch.setattr(launch, "run_logged", always_out_of_memory)
    with pytest.raises(PipelineError, match="out of memory even at micro-batch 1"):
        train_stage(_cfg(tiny_model_dir, f"train.num_processes={RANKS}"), tmp_path, tmp_path / "out")


def test_a_rank_reports_training_out_of_memory_and_nothing_else_as_such(monkeypatch, tmp_path, capsys):
    from sft_pipeline.train import trainer
    from sft_pipeline.train.failures import RankOutOfMemory

    argv = ["--config", str(REPO / "deployments/configs/tiny.yaml"), "--tokenized", "t", "--out", str(tmp_path)]
    report = tmp_path / launch.LAUNCH_DIR / "rank-0.json"

    def raising(exc):
        def train_model(*args, **kwargs):
            raise exc
        return train_model

    monkeypatch.setattr(trainer, "train_model", raising(RankOutOfMemory("out of memory at micro-batch 4")))
    assert launch.main(argv) == launch.OOM_EXIT_CODE
    assert json.loads(report.read_text())["out_of_memory"] is True

    # Out of memory outside the training steps (say, merging) is an ordinary failure: no back-off.
    monkeypatch.setattr(trainer, "train_model", raising(torch.OutOfMemoryError("CUDA out of memory.")))
    with pytest.raises(torch.OutOfMemoryError):
        launch.main(argv)
    assert json.loads(report.read_text())["out_of_memory"] is False


def test_a_rank_error_is_raised_as_its_one_line(tmp_path, tokenized):
    from sft_pipeline.errors import InputError

    cfg = _cfg(tmp_path / "no-such-model", f"train.num_processes={RANKS}")
    with pytest.raises(InputError) as err:
        train_stage(cfg, tokenized, tmp_path / "out")
    assert str(err.value).startswith("model ") and "no-such-model" in str(err.value) and "\n" not in str(err.value)


def test_launch_failures_keep_the_rank_verdict_or_quote_the_log(tmp_path):
    from sft_pipeline.train import is_transient

    log = tmp_path / "attempt-1.log"
    log.write_text("[rank0]: Traceback (most recent call last):\n[rank0]: RuntimeError: NCCL error: unhandled\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \nsft_pipeline.train FAILED\n")
    report = {"rank": 1, "type": "HfHubHTTPError", "message": "503 Service Unavailable", "pipeline_error": False,
              "out_of_memory": False, "transient": True}
    hub = launch.failure(1, log, log.read_text(), report)
    assert is_transient(hub) and "rank 1 failed: HfHubHTTPError: 503" in str(hub)
    bug = {**report, "type": "ValueError", "transient": False}
    assert not is_transient(launch.failure(1, log, log.read_text(), bug))
    crashed = launch.failure(-9, log, log.read_text(), None)  # no report: a rank killed or crashed in C
    assert "RuntimeError: NCCL error" in str(crashed) and str(log) in str(crashed)


def test_fsdp_needs_gpus_and_ranks_need_their_gpus(tiny_model_dir, monkeypatch):
    fsdp = _cfg(tiny_model_dir, "train.num_processes=2", "train.distributed=fsdp").train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="fsdp needs GPUs"):
        launch.check_devices(fsdp)
    launch.check_devices(_cfg(tiny_model_dir, "train.num_processes=2").train)  # ddp on CPU ranks is fine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"num_processes=2, but this machine has 1 GPU"):
        launch.check_devices(fsdp)


KILL_STEPS = 24
CHILD = """
import sys
from pathlib import Path
from sft_pipeline.config import PipelineConfig
from sft_pipeline.train import train_stage
cfg = PipelineConfig.model_validate_json(Path(sys.argv[1]).read_text())
train_stage(cfg, sys.argv[2], sys.argv[3])
"""


def test_killing_the_task_process_stops_its_ranks_and_the_rerun_resumes(tiny_model_dir, tokenized, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from sft_pipeline.train.resume import latest_complete_checkpoint, saved_step

    cfg = _cfg(tiny_model_dir, f"train.num_processes={RANKS}", f"train.max_steps={KILL_STEPS}")
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    out = tmp_path / "train"
    task = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cfg.json"), str(tokenized), str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while latest_complete_checkpoint(out / constants.CHECKPOINTS_DIR) is None:
        assert task.poll() is None, "the training task exited before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    ranks = psutil.Process(task.pid).children(recursive=True)
    os.kill(task.pid, signal.SIGKILL)
    task.wait()
    _, alive = psutil.wait_procs(ranks, timeout=60)
    assert not alive, f"launcher or ranks outlived the killed task: {alive}"
    assert not (out / constants.ADAPTER_DIR).exists(), "ranks trained on to the end after the task was killed"
    killed_at = saved_step(latest_complete_checkpoint(out / constants.CHECKPOINTS_DIR))
    assert 0 < killed_at < KILL_STEPS

    resumed = train_stage(cfg, tokenized, out)

    assert resumed["resumed_from_step"] == killed_at and resumed["steps"] == KILL_STEPS
    assert [e["step"] for e in _metrics(out)["loss"]] == list(range(1, KILL_STEPS + 1))


def test_train_key_counts_ranks_but_not_launch_settings_of_one_process(tiny_model_dir, tokenized, tmp_path):
    from sft_pipeline import cache, stages

    upstream = {"tokenize": stages.StageResult(stage=constants.STAGE_TOKENIZE, key="k", out_dir=str(tokenized),
                                              files={constants.TRAIN_TOKENS_FILE: "digest"})}

    def key(*extra):
        cfg = _cfg(tiny_model_dir, f"run.output_dir={tmp_path}", *extra)
        return cache.key(stages.get(constants.STAGE_TRAIN), cfg, upstream)

    one = key()
    assert one == key("train.distributed=fsdp") == key("train.work_pool=gpu")  # same result wherever it runs
    assert key("train.num_processes=2") not in (one, key("train.num_processes=2", "train.distributed=fsdp"))


KILLED_LOG = """[rank0]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Root Cause (first observed failure):
[0]:
  time      : 2026-11-24_21:24:00
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 19534)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 19534
============================================================
"""


def test_the_root_cause_rank_decides_not_a_peer_that_reported_later(tmp_path):
    from sft_pipeline.train import is_transient, ranks

    folder = tmp_path / launch.LAUNCH_DIR
    peer = RuntimeError("Connection closed by peer")
    with pytest.MonkeyPatch.context() as m:
        m.setenv(ranks.RANK_ENV, "0")
        ranks.report_failure(folder, peer)  # rank 0 noticed its peer was gone
    assert ranks.first_failure(folder)["rank"] == 0
    log = folder / "attempt-1.log"
    log.write_text(KILLED_LOG)
    cause = launch.root_cause(KILLED_LOG)
    assert cause["rank"] == 1 and ranks.first_failure(folder, cause["rank"]) is None
    killed = launch.failure(1, log, KILLED_LOG, None, cause)  # rank 1 was killed: pre-emption or the host's OOM killer
    assert "rank 1 was killed: Signal 9 (SIGKILL)" in str(killed) and is_transient(killed)

    with pytest.MonkeyPatch.context() as m:
        m.setenv(ranks.RANK_ENV, "1")
        ranks.report_failure(folder, ValueError("bad shape"))
    assert ranks.first_failure(folder)["rank"] == 0, "earliest report when torchrun names no rank"
    assert ranks.first_failure(folder, 1)["type"] == "ValueError"
