"""The GPU check's parts, each in its own process group, time-boxed, results merged as each finishes.

Run by ``bench/gpu/check.sh OUTDIR`` after the carried wheels are installed. Writes into OUTDIR:
``check.json`` (everything measured, rewritten after every part), ``check.md`` (the tables) and
``check.log`` (each part's output). Parts, in order, each given at most its box and what is left of
``--budget`` seconds (``levers_8b`` gets what is left after keeping ``default_model``'s box):

1. ``env``: device, driver, library versions;
2. ``tests``: ``pytest -m gpu tests/test_gpu.py`` (qlora / lora / full in bf16, resume, a real CUDA
   out-of-memory error, Liger and flex attention, the memory estimate recorded);
3. ``train_8b``: ours vs TRL ``SFTTrainer`` defaults at matched settings, checkpointing on and off
   (``--variants``), on a random Llama-3-8B-shaped model, QLoRA NF4, micro-batch 4 x 2048 tokens
   (``bench/bench_train.py``): tokens/s over 3 windows of 3 steps after 3 warm-up steps, peak
   memory measured and estimated;
4. ``levers_8b``: the same for the speed levers (``--levers``), as many as the time allows;
5. ``default_model``: the default model's shape (Gemma 3 270M, random weights) through the train
   stage, then timed batched greedy generation (``bench/gpu/default_model.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

GPU_DIR = Path(__file__).resolve().parent
REPO = GPU_DIR.parents[1]
sys.path.insert(0, str(REPO / "bench"))

BOXES = {"tests": 75, "train_8b": 195, "default_model": 85}  # seconds; levers_8b gets the rest
MIN_PART_S = 30  # a part with less time left than this is skipped
MATCHED = "trl,ours+gc,trl+nogc,ours"  # TRL's default (checkpointing on) first, then off; ours the same
LEVERS = "ours+packed+flex,ours+liger,ours+flex,ours+gc+packed+flex"
STEPS_8B = ("--steps", "12", "--warmup-steps", "3", "--window-steps", "3")  # 3 windows of 3 steps
MIN_VARIANT_S = {"train_8b": "35", "levers_8b": "50"}  # a variant with less time left is not started
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "pydantic",
             "liger_kernel", "triton", "tokenizers", "pyarrow", "numpy")
SHM = Path("/dev/shm")
MODEL_CACHE_MIN_FREE = 24 * 2**30  # the 8B bf16 checkpoint is 16 GB


class Check:
    """Where results go, and how much time is left."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline = out, time.monotonic() + budget
        self.work = Path(os.environ.get("SFT_GPU_WORK", "/tmp/sft-gpu-check"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "parts": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        (self.out / "check.json").write_text(json.dumps(self.results, indent=1, default=str))
        from check_report import markdown

        (self.out / "check.md").write_text(markdown(self.results))

    def run(self, name: str, argv: list[str], box: float | None, env: dict | None = None) -> int | None:
        """Run ``argv`` with output appended to check.log; kill its whole process group at the time limit."""
        limit = self.left() if box is None else min(box, self.left())
        if limit < MIN_PART_S:
            self.results["parts"][name] = {"status": "skipped", "reason": f"{self.left():.0f} s left"}
            self.save()
            return None
        started = time.monotonic()
        with open(self.out / "check.log", "a") as log:
            log.write(f"\n===== {name}: {' '.join(argv)} (limit {limit:.0f} s)\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **(env or {})})
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        status = "timed out" if code is None else ("ok" if code == 0 else f"exit {code}")
        self.results["parts"][name] = {"status": status, "seconds": round(time.monotonic() - started, 1)}
        return code


def part_env(check: Check) -> None:
    import importlib.metadata as md

    import torch

    props = torch.cuda.get_device_properties(0)
    smi = shutil.which("nvidia-smi")
    check.results["env"] = {
        "device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
        "memory_gib": round(props.total_memory / 2**30, 1), "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "driver": subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True).stdout.strip() if smi else None,
        "versions": {lib: _version(md, lib) for lib in LIBRARIES},
    }
    check.results["parts"]["env"] = {"status": "ok"}


def _version(md, name: str) -> str | None:
    try:
        return md.version(name.replace("_", "-"))
    except md.PackageNotFoundError:
        return None


def part_tests(check: Check, assets: Path) -> None:
    xml = check.work / "tests.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=",
            f"--junitxml={xml}", "tests/test_gpu.py"]
    check.run("tests", argv, BOXES["tests"], env={"SFT_GPU_TOKENIZER": str(assets / "tokenizer")})
    if xml.exists():
        check.results["tests"] = junit_cases(xml)


def junit_cases(path: Path) -> list[dict]:
    """Each test case of a JUnit XML report: name, outcome, seconds, first line of any message."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = {"failure": "failed"}.get(tag, tag), (node.get("message") or "").splitlines()[:1]
                message = message[0] if message else ""
                break
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "message": message[:300]})
    return cases


def part_default_model(check: Check, assets: Path, model: str | None) -> None:
    out = check.work / "default_model.json"
    argv = [sys.executable, str(GPU_DIR / "default_model.py"), "--assets", str(assets), "--out", str(out),
            "--work", str(check.work / "default-model")] + (["--model", model] if model else [])
    check.run("default_model", argv, BOXES["default_model"])
    if out.exists():
        check.results["default_model"] = json.loads(out.read_text())


def model_cache() -> Path:
    """Shared memory for the 16 GB random checkpoint when it has room, else /tmp."""
    if SHM.is_dir() and shutil.disk_usage(SHM).free > MODEL_CACHE_MIN_FREE:
        return SHM / "sft-gpu-models"
    return Path("/tmp/sft-gpu-models")


def part_8b(check: Check, assets: Path, name: str, variants: str, box: float) -> None:
    """``bench_train.py`` on the 8B shape for ``variants``, within ``box`` seconds (a variant at a time)."""
    out = check.work / f"{name}.json"
    deadline = time.time() + min(box, check.left()) - 5
    argv = [sys.executable, str(REPO / "bench" / "bench_train.py"), "--model", "llama3-8b", "--method", "qlora",
            "--tokenizer", str(assets / "tokenizer"), "--cache", str(model_cache()),
            "--conversations", str(assets / "conversations.jsonl.gz"), "--rows", "160", "--heldout", "0",
            "--max-length", "2048", "--batch", "4", "--accum", "1", *STEPS_8B, "--variants", variants,
            "--variant-timeout", "120", "--min-variant-s", MIN_VARIANT_S[name], "--deadline", str(deadline),
            "--json", str(out)]
    check.run(name, argv, box)
    if out.exists():
        check.results[name] = json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--assets", type=Path, default=REPO / ".whl" / "assets")
    parser.add_argument("--budget", type=float, default=440, help="seconds for all parts together")
    parser.add_argument("--model", default=os.environ.get("SFT_GPU_MODEL"), help="real default-model weights")
    parser.add_argument("--variants", default=MATCHED, help="train_8b's variants (bench/bench_train.py)")
    parser.add_argument("--levers", default=LEVERS, help="levers_8b's variants")
    parser.add_argument("--parts", default="env,tests,train_8b,levers_8b,default_model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.budget)
    later = BOXES["default_model"] if "default_model" in args.parts.split(",") else 0
    parts = {
        "env": lambda: part_env(check),
        "tests": lambda: part_tests(check, args.assets),
        "train_8b": lambda: part_8b(check, args.assets, "train_8b", args.variants, BOXES["train_8b"]),
        "levers_8b": lambda: part_8b(check, args.assets, "levers_8b", args.levers, check.left() - later),
        "default_model": lambda: part_default_model(check, args.assets, args.model),
    }
    for name in args.parts.split(","):
        try:
            parts[name]()
        except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the others' results
            check.results["parts"][name] = {"status": f"error: {type(exc).__name__}: {exc}"}
        check.save()
    print((args.out / "check.md").read_text())


if __name__ == "__main__":
    main()
