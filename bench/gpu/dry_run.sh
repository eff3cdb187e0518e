#!/usr/bin/env bash
# Dry run of the GPU check's carry on this CPU machine: is the wheel list in .whl/ complete?
#
# 1. Install .whl/*.whl into a clean --target folder with a CPython 3.12 (the image's Python), exactly as
#    check.sh does on the GPU machine.
# 2. Metadata closure: every requirement of every carried wheel is carried or in the image's package list
#    (bench/gpu/image_packages.txt, from the device docs), at a known version where the docs give one.
# 3. In an isolated CPython 3.12 with only that folder on the path, import each carried package whose
#    requirements are all carried (those that need torch, numpy, ... are checked by step 4).
# 4. Import trace: import every module the check runs and exercise the lazily importing paths (tiny-model
#    QLoRA and padding-free LoRA steps, TRL, generation) in this venv with the image's versions of
#    transformers, huggingface_hub and tokenizers laid over it (pure Python or abi3 wheels, from PyPI),
#    and map every loaded module to its distribution: each must be in the image's list or carried.
# 5. The CPU tests of tests/test_gpu.py under the same overlay (the gpu ones skip: no CUDA here).
#    Not covered: the image's torch 2.11 (this venv has the CPU build of another), Liger (needs triton).
#
#   make gpu-wheels && bash bench/gpu/dry_run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-/work/main/.venv/bin/python}
py312=${PYTHON312:-}
for candidate in python3.12 /usr/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
  [ -n "$py312" ] && break
  "$candidate" -V >/dev/null 2>&1 && py312=$candidate
done
[ -n "$py312" ] || { echo "no CPython 3.12 here (the GPU image's Python); set PYTHON312" >&2; exit 2; }
site=$(mktemp -d /tmp/sft-dry-site.XXXX)
trap 'rm -rf "$site"' EXIT

echo "== 1. clean --target install of .whl/*.whl with $("$py312" -V)"
"$py312" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
ls "$site" | grep -v -e '\.dist-info$' -e '^bin$' | tr '\n' ' '; echo

echo "== 2. metadata closure"
"$py" bench/gpu/wheels.py closure .whl

echo "== 3. isolated CPython 3.12, nothing but the --target folder"
"$py312" -I -c "
import sys; sys.path.insert(0, '$site')
import importlib, importlib.util
pure = ['typing_extensions', 'annotated_types', 'typing_inspection', 'pydantic_core', 'pydantic', 'dill', 'multiprocess']
for name in pure:
    importlib.import_module(name)
import pydantic
class M(pydantic.BaseModel):
    x: int
assert M(x='3').x == 3
rest = ['trl', 'bitsandbytes', 'datasets', 'liger_kernel', 'gguf']
missing = [n for n in rest if importlib.util.find_spec(n) is None]
assert not missing, missing
print('imported', ', '.join(pure), '(a pydantic model validates); present:', ', '.join(rest))
"

overlay_wheels=${SFT_DRY_OVERLAY_CACHE:-/tmp/sft-dry-image-wheels}
overlay=$(mktemp -d /tmp/sft-dry-overlay.XXXX)
trap 'rm -rf "$site" "$overlay"' EXIT
pins=$(grep -E '^(transformers|huggingface-hub|tokenizers)==' bench/gpu/image_packages.txt | tr '\n' ' ')
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$overlay_wheels" $pins 2>&1 | grep -v "is ignored" || true
"$py" -m pip install -q --no-index --no-deps --target "$overlay" --find-links "$overlay_wheels" $pins
export PYTHONPATH="$overlay"
echo "== 4. import trace (this venv + the image's $pins, CPU)"
"$py" bench/gpu/import_trace.py .whl

echo "== 5. tests/test_gpu.py on the CPU, same overlay"
"$py" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py
echo "== dry run: the wheel list is complete"
