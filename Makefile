# Two entry points on a fresh machine (see README):
#   make example   set up .venv and run the tiny CPU co-distillation example
#   make test      set up .venv and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel here; on a GPU cluster install the cluster's torch first and set TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup example test lint clean

$(BIN)/.installed: setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

example: setup
	$(BIN)/codistill train examples/tiny_cpu/config.yaml

# two workers (one per core here); each test file stays on one worker (module fixtures run once)
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check megatron_codistill tests tools benchmarks examples

clean:
	rm -rf runs/tiny_cpu
