#!/usr/bin/env bash
# The GPU check: one prepared device run, at most 8 minutes on one H200 (parts: bench/gpu/check.py).
#
#   here:        make gpu-wheels        # .whl/: the wheels the GPU image lacks + .whl/assets
#   device run:  carry [".whl"], command: bash bench/gpu/check.sh $OUT
#
# Writes OUTDIR/check.json, OUTDIR/check.md and OUTDIR/check.log. Without a CUDA device it stops at
# once with one line and exit status 2. Extra arguments go to check.py (--budget S, --parts, --variants).
set -uo pipefail
out=${1:?usage: bash bench/gpu/check.sh OUTDIR [check.py options]}
shift
cd "$(dirname "$0")/../.." || exit 2
py=${PYTHON:-python3}

if ! nvidia-smi -L >/dev/null 2>&1 || ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "no CUDA device: bench/gpu/check.sh runs on a GPU machine (see the README's GPU check)" >&2
  exit 2
fi
if ! ls .whl/*.whl >/dev/null 2>&1 || [ ! -d .whl/assets ]; then
  echo ".whl/ is missing: run 'make gpu-wheels' before the device run and carry .whl" >&2
  exit 2
fi
site=${SFT_GPU_SITE:-/tmp/sft-gpu-site}
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
  || { echo "installing the carried wheels into $site failed" >&2; exit 3; }
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$py" bench/gpu/check.py "$out" "$@"
