"""`sft-pipeline run` stopped with SIGTERM exits promptly, with one line, and leaves no Prefect server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "deployments" / "configs" / "tiny.yaml"
STARTED = "Task run 'ingest"  # the flow is running, so the temporary server is up
TRAINING = " - step 2/1000000"  # a training progress line
WAIT_S = 300


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("started", [STARTED, TRAINING])
def test_sigterm_stops_the_run_and_its_temporary_server(tiny_model_dir, tmp_path, started):
    # During training too: Prefect's own handler waited for the running task, so a first SIGTERM during a
    # 30-minute evaluation stopped nothing. Training here would take hours: only a prompt stop passes.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(TINY), "--set", f"run.output_dir={tmp_path}",
           "--set", f"model.name_or_path={tiny_model_dir}", "--set", "train.max_steps=1000000",
           "--set", "train.progress_steps=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not any(started in line for line in lines):
        lines.append(proc.stdout.readline())
    assert any(started in line for line in lines), "".join(lines)
    server = children(proc.pid)
    assert server, "no temporary Prefect server was started"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    rest, _ = proc.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 128 + signal.SIGTERM
    assert rest.strip().splitlines()[-1] == ("error: terminated (SIGTERM); the run was stopped, "
                                              "completed stages stay cached")
    time.sleep(2)
    assert not [pid for pid in server if alive(pid)], "the temporary server outlived the run"


@pytest.mark.parametrize("entry", ["flows.cli", "sft_pipeline.cli"])  # the console script, the library alone
def test_sigterm_during_a_library_command_removes_its_temporary_files(tmp_path, entry):
    # `sft-pipeline ingest` stopped while it reads a pipe: it left the pipe's spool folder and the half-built
    # `.OUT.tmp-*` folder behind, and said "completed stages stay cached" of a command that has no stages.
    temp, out = tmp_path / "tmp", tmp_path / "out"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", entry, "ingest", "/dev/stdin", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    proc.stdin.write('{"instruction": "Say hi.", "output": "Hi there, how are you today?"}\n' * 100)
    proc.stdin.flush()  # and left open: the command waits for the rest of the pipe
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(temp.glob("sft-ingest-spool-*")):
        time.sleep(0.1)
    assert list(temp.glob("sft-ingest-spool-*")), "the pipe was not being spooled"
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert rest.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    assert list(temp.iterdir()) == [] and list(tmp_path.glob(".out.tmp-*")) == [] and not out.exists()


def _start_run(tmp_path: Path, *overrides: str, until: str = "evaluate") -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(TINY), "--set", f"run.output_dir={tmp_path}",
           "--until", until, *[arg for item in overrides for arg in ("--set", item)]]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, marker: str) -> list[str]:
    lines, deadline = [], time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not any(marker in line for line in lines) and proc.poll() is None:
        lines.append(proc.stdout.readline())
    assert any(marker in line for line in lines), "".join(lines)
    return lines


def _server_of(pid: int) -> list[int]:
    return [child for child in children(pid) if b"uvicorn" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_kill_9_of_a_run_leaves_no_temporary_server_behind(tiny_model_dir, tmp_path):
    # The server (about 220 MB) ran for ever, one more per crash.
    proc = _start_run(tmp_path, f"model.name_or_path={tiny_model_dir}")
    _read_until(proc, STARTED)
    server = _server_of(proc.pid)
    assert server, "no temporary Prefect server was started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [pid for pid in server if alive(pid)]:
        time.sleep(0.2)
    assert not [pid for pid in server if alive(pid)], "the temporary server outlived its killed run"


def test_a_run_whose_temporary_server_dies_reports_its_outputs_and_exits(tiny_model_dir, tmp_path):
    # The CLI hung after every stage had finished (events-worker errors every 7 s, still alive after 300 s).
    proc = _start_run(tmp_path, f"model.name_or_path={tiny_model_dir}", "train.max_steps=16", until="train")
    _read_until(proc, "speed levers")  # training has begun (its steps are still to come) when the server dies
    for pid in _server_of(proc.pid):
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    rest, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, rest[-3000:]
    assert time.monotonic() - killed < 240
    lines = rest.strip().splitlines()
    assert any(line.startswith("warning: Prefect's temporary server stopped during the run") for line in lines)
    adapter = next((line.split()[-1] for line in lines if line.startswith("adapter:")), None)
    assert adapter and Path(adapter, "adapter_model.safetensors").is_file(), rest[-3000:]
    assert sum("failed to process item" in line for line in lines) <= 2, "the events worker's lines go on"
