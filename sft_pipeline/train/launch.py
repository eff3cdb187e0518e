"""Training on several processes: ``accelerate launch`` (torchrun) with DDP or FSDP.

``train.num_processes: 1`` (the default) trains in the calling process. With N > 1,
:func:`launch_training` runs ``accelerate launch --num_processes N -m sft_pipeline.train``
and waits: one rank per GPU, or N CPU ranks (gloo) on a machine without one. Every
rank trains on its share of each batch, so the effective batch is
``batch_size * gradient_accumulation * num_processes``. Rank 0 writes metrics (token
counts summed over ranks), loss curve and adapter; checkpoints are written by all
ranks together and resumed the same way as in one process.

Out of memory on any rank while training stops all of them (torchrun tears the
group down); the launcher then starts them again with half the micro-batch and twice the gradient
accumulation, down to 1: the same driver (``failures.back_off``) as in one process. Each attempt's output is
kept in ``LAUNCH_DIR/attempt-<n>.log`` of the stage output and forwarded to the log;
a failing rank reports its error in ``LAUNCH_DIR/rank-<n>.json``, and the report of
the rank torchrun names as the root cause is the error the stage raises.
QLoRA under FSDP relies on ``bnb_4bit_quant_storage`` matching the compute dtype,
which ``load_causal_lm`` sets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal, Sequence

import torch

import sft_pipeline
from sft_pipeline import errors
from sft_pipeline.constants import METRICS_FILE
from sft_pipeline.errors import ConfigError, PipelineError
from sft_pipeline.files import write_json
from sft_pipeline.models import compute_dtype
from sft_pipeline.train import ranks
from sft_pipeline.train.failures import RankFailure, back_off
from sft_pipeline.train.job import TrainJob
from sft_pipeline.train.resume import remove_incomplete

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
FSDP_ARGS = (
    "--use_fsdp",
    "--fsdp_version", "2",
    "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_state_dict_type", "FULL_STATE_DICT",  # Trainer.save_model writes nothing for sharded state
    "--fsdp_cpu_ram_efficient_loading", "true",
    "--fsdp_reshard_after_forward", "true",
)
LAUNCH_DIR = "launch"  # in the train output: the job every rank loads, one log per attempt
RANK_JOB = "job.json"
USE_CPU_ENV = "ACCELERATE_USE_CPU"  # makes transformers/accelerate run CPU ranks as DDP over gloo
OOM_EXIT_CODE = 75  # a rank's exit status after running out of memory while training (EX_TEMPFAIL)
PIPELINE_ERROR_EXIT_CODE = 2
PR_SET_PDEATHSIG = 1  # prctl option: signal to receive when the parent dies
ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.MULTILINE)  # in torchrun's failure summary
ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)
ROOT_TRACE = re.compile(r"^\s*traceback\s*:\s*(.*?)\s*$", re.MULTILINE)
EXCEPTION_LINE = re.compile(r"\b(?!ChildFailedError)(\w+(?:Error|Exception)): .+")


def accelerate_command(
    job_file: str | Path,
    tokenized_dir: str | Path,
    out_dir: str | Path,
    *,
    num_processes: int,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    mixed_precision: str = "bf16",
    port: int | None = None,
) -> list[str]:
    """The ``accelerate launch`` argv running the job in ``job_file`` (``TrainJob.spec``) on ``num_processes`` ranks.

    >>> argv = accelerate_command("job.json", "tok", "out", num_processes=2, port=29501)
    >>> argv[1:3], argv[argv.index("--num_processes") + 1], "--multi_gpu" in argv
    (['-m', 'accelerate.commands.launch'], '2', True)
    >>> argv[argv.index("-m", 3):]
    ['-m', 'sft_pipeline.train', '--job', 'job.json', '--tokenized', 'tok', '--out', 'out']
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if num_processes < 1:
        raise ValueError("num_processes must be at least 1")
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if port is not None:
        argv += ["--main_process_port", str(port)]
    argv += ["--multi_gpu"] if strategy == "ddp" else list(FSDP_ARGS)
    return argv + ["-m", "sft_pipeline.train", "--job", str(job_file), "--tokenized", str(tokenized_dir),
                   "--out", str(out_dir)]


def free_port() -> int:
    """A TCP port free right now on this machine, for the ranks' rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment() -> dict[str, str]:
    """The launcher's environment: this package importable, CPU ranks marked as such."""
    env = dict(os.environ)
    root = str(Path(sft_pipeline.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if not torch.cuda.is_available():
        env[USE_CPU_ENV] = "true"
    return env


def tied_to_this_process(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when this process dies, even by SIGKILL (Linux).

    torchrun stops its ranks on SIGTERM, so a killed task leaves no ranks training on
    behind a retry. The child sets ``PR_SET_PDEATHSIG`` itself, then execs ``argv``
    (no ``preexec_fn``: unsafe in a threaded parent such as a Prefect worker).
    """
    if not sys.platform.startswith("linux"):
        return argv
    shim = (
        "import ctypes, os, signal, sys\n"
        f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
        f"if os.getppid() != {os.getpid()}: sys.exit('parent gone')\n"
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", shim, *argv]


def run_logged(argv: list[str], log_path: Path) -> int:
    """Run ``argv``; every output line goes to ``log_path`` and to this module's log.

    If this function is interrupted (a cancelled task, Ctrl-C), the launch is stopped too.
    """
    with log_path.open("w") as sink, subprocess.Popen(
        tied_to_this_process(argv), env=rank_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding="utf-8", errors="replace", bufsize=1,
    ) as proc:
        try:
            for line in proc.stdout:
                sink.write(line)
                if line.strip():
                    log.info("%s", line.rstrip())
        except BaseException:
            proc.terminate()  # torchrun passes it on to the ranks; leaving the block waits for them
            raise
    return proc.returncode


def root_cause(log_text: str) -> dict | None:
    """Rank, exit code and traceback line of torchrun's "Root Cause (first observed failure)" block.

    >>> root_cause("Root Cause (first observed failure):\\n[0]:\\n  rank      : 1 (local_rank: 1)\\n"
    ...            "  exitcode  : -9 (pid: 12)\\n  traceback : Signal 9 (SIGKILL) received by PID 12\\n")
    {'rank': 1, 'exitcode': -9, 'traceback': 'Signal 9 (SIGKILL) received by PID 12'}
    """
    _, found, block = log_text.rpartition("Root Cause (first observed failure)")
    rank, code = (ROOT_RANK.search(block), ROOT_EXIT.search(block)) if found else (None, None)
    if not (rank and code):
        return None
    trace = ROOT_TRACE.search(block)
    return {"rank": int(rank.group(1)), "exitcode": int(code.group(1)), "traceback": trace.group(1) if trace else ""}


def failure(code: int, log_path: Path, log_text: str, report: dict | None,
            cause: dict | None = None) -> Exception:
    """The error for a failed launch: the root-cause rank's, as that rank judged it.

    A rank's pipeline error comes back as the same class (one line, not retried); any
    other error as :class:`RankFailure` carrying the rank's own transient verdict. A
    rank killed by a signal (pre-emption, the host's OOM killer) reports nothing: that
    is a transient RankFailure. Otherwise the last exception line in the log is quoted
    in a plain RuntimeError.
    """
    where = f"full output in {log_path}"
    if report is not None:
        if report["pipeline_error"]:
            cls = getattr(errors, report["type"], PipelineError)
            return (cls if isinstance(cls, type) and issubclass(cls, PipelineError) else PipelineError)(report["message"])
        return RankFailure(f"train: rank {report['rank']} failed: {report['type']}: {report['message']} ({where})",
                           transient=report["transient"])
    if cause is not None and cause["exitcode"] < 0:
        return RankFailure(f"train: rank {cause['rank']} was killed: {cause['traceback']} ({where})", transient=True)
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    raised = [m.group(0) for line in lines if (m := EXCEPTION_LINE.search(line))]
    last = raised[-1] if raised else (lines[-1] if lines else "no output")
    return RuntimeError(f"train: accelerate launch exited with status {code} ({last}); {where}")


def next_log(folder: Path) -> Path:
    """``attempt-<n>.log`` with the next free n: logs of earlier task retries are kept."""
    return folder / f"attempt-{len(list(folder.glob('attempt-*.log'))) + 1}.log"


def check_devices(train) -> None:
    """One GPU per rank; FSDP only on GPUs (accelerate runs CPU ranks as plain DDP whatever is asked)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and train.num_processes > gpus:
        raise ConfigError(f"train.num_processes={train.num_processes}, but this machine has {gpus} GPU(s)")
    if not gpus and train.distributed == "fsdp":
        raise ConfigError("train.distributed=fsdp needs GPUs; CPU ranks train with ddp only")


def launch_attempt(job: TrainJob, folder: Path) -> None:
    """Train ``job`` (at its own batch shape) on its launched ranks; raise what the root-cause rank failed with.

    Out of memory on a rank comes back as ``torch.OutOfMemoryError``, for :func:`back_off`.
    """
    log_path = next_log(folder)
    ranks.clear_failures(folder)
    write_json(folder / RANK_JOB, job.spec())
    precision = "bf16" if compute_dtype() == torch.bfloat16 else "no"
    argv = accelerate_command(folder / RANK_JOB, job.tokenized_dir, job.out_dir, num_processes=job.train.num_processes,
                              strategy=job.train.distributed, mixed_precision=precision, port=free_port())
    code = run_logged(argv, log_path)
    if code == 0:
        return
    log_text = log_path.read_text(errors="replace")
    cause = root_cause(log_text)
    report = ranks.first_failure(folder, cause["rank"] if cause else None)
    if report and report["out_of_memory"]:
        raise torch.OutOfMemoryError(f"train: rank {report['rank']} ran out of memory at micro-batch "
                                     f"{job.train.batch_size}; full output in {log_path}")
    raise failure(code, log_path, log_text, report, cause)


def launch_training(job: TrainJob) -> dict:
    """Train ``job`` on ``job.train.num_processes`` ranks; return the stage counts (as ``train_model`` does)."""
    from sft_pipeline.train.export import summary

    check_devices(job.train)
    folder = job.out_dir / LAUNCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    remove_incomplete(job.checkpoints_dir)  # once, before any rank looks for a checkpoint
    _, attempts = back_off(job.batch, lambda batch: launch_attempt(job.with_batch(batch), folder))
    metrics = json.loads((job.out_dir / METRICS_FILE).read_text())
    metrics["attempts"] = attempts
    write_json(job.out_dir / METRICS_FILE, metrics)
    return summary(metrics)


def job_from_args(args) -> TrainJob:
    """The job a rank runs: the launcher's ``--job`` file, or a pipeline config (a launch by hand)."""
    from sft_pipeline.config import load_config

    if args.job:
        return TrainJob.load(args.job, args.tokenized, args.out)
    cfg = load_config(args.config, args.set)
    return TrainJob.from_config(cfg, args.tokenized, args.out, checkpoint_url=args.checkpoint_url)


def parse_args(argv: Sequence[str] | None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sft_pipeline.train", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="pipeline YAML config")
    source.add_argument("--job", help="train job JSON written by the launcher (TrainJob.spec)")
    parser.add_argument("--tokenized", required=True, help="tokenize stage output folder")
    parser.add_argument("--out", required=True, help="train stage output folder (checkpoints live here)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--checkpoint-url", help="also upload complete checkpoints to this fsspec URL")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sft_pipeline.train (--config C [--set k=v ...] | --job J) --tokenized DIR --out DIR`` (one rank)."""
    from sft_pipeline.train import trainer

    args = parse_args(argv)
    if ranks.is_main_rank():
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = trainer.train_model(job_from_args(args))
    except Exception as exc:
        report = ranks.report_failure(Path(args.out) / LAUNCH_DIR, exc)
        if report["out_of_memory"]:
            print(f"rank {report['rank']}: {exc}", file=sys.stderr)
            return OOM_EXIT_CODE
        if not report["pipeline_error"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return PIPELINE_ERROR_EXIT_CODE
    if ranks.is_main_rank():
        print(json.dumps(counts, sort_keys=True))
    return 0
