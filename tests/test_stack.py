"""Production shape on loopback: real Prefect server, process work pools, workers, deployments.

Runs `deployments/stack.sh` exactly as a user would, on the tiny config: `sft/full`, then a
two-branch `sft-sweep/sweep`, each with training handed to the `sft-train/gpu` deployment on the
`gpu` pool, and checks the outputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from sft_pipeline import constants
from sft_pipeline.sweep_report import SWEEP_JSON

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = ROOT / "tests" / "data" / "tiny_chat.jsonl"
STACK_TIMEOUT_S = 900
FINISHED = "Flow run finished successfully in '"  # a Completed state, whatever the verdict names it


def test_stack_runs_sft_full_and_a_sweep_with_gpu_handoff(tiny_model_dir, tmp_path):
    out = tmp_path / "runs"
    params = {
        "config": "deployments/configs/tiny.yaml",
        "overrides": [
            f"run.output_dir={out}",
            f"model.name_or_path={tiny_model_dir}",
            f"ingest.sources=[{{path: '{TINY_DATA}'}}]",
            "train.work_pool=gpu",
        ],
    }
    # 0.7 is the config's own setting (trained by sft/full, reused); 0.95 keeps fewer rows and trains anew.
    sweep = {**params, "thresholds": [0.95]}
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "VENV_BIN": str(Path(sys.executable).parent)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "deployments" / "stack.sh"), "sft/full", json.dumps(params),
         "sft-sweep/sweep", json.dumps(sweep)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=STACK_TIMEOUT_S,
    )
    logs = tmp_path / "prefect" / "logs"
    detail = proc.stdout[-3000:] + proc.stderr[-3000:]
    for log in sorted(logs.glob("worker-*.log")):
        detail += f"\n--- {log.name}\n" + log.read_text()[-3000:]
    assert proc.returncode == 0, detail
    assert FINISHED in proc.stdout, detail
    reports = list(out.glob(f"evaluate/*/{constants.REPORT_MD_FILE}"))
    adapters = list(out.glob(f"train/*/{constants.ADAPTER_DIR}/adapter_model.safetensors"))
    assert reports and adapters, detail
    # Training ran on the gpu pool's worker, in a flow run of its own: once for sft/full, once for the new branch.
    assert proc.stdout.count(FINISHED) == 2, detail
    assert len(adapters) == 2, detail
    assert (logs / "worker-gpu.log").read_text().count("submitting flow run") >= 2, detail
    summary = json.loads(next(out.glob(f"sweep/*/{SWEEP_JSON}")).read_text())
    assert sorted(row["setting"] for row in summary["branches"]) == ["threshold=0.7", "threshold=0.95"], detail
