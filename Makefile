# Two commands do all set-up: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: setup demo test mutation lint format bench bench_all clean

$(STAMP): requirements.txt
	@command -v $(PY) >/dev/null 2>&1 || { echo "$(PY) not found; run 'make PY=python3 ...'"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python main.py --config=configs/compare_reverse.py --workdir=$(WORKDIR) --sweep --seeds=3

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m pytest -n 2 --durations=15 tests

# Curated mutants (tests/mutation/) on a temporary copy; kill table -> docs/testing.md.
mutation: $(STAMP)
	$(BIN)/python -m tests.mutation --docs docs/testing.md

bench: $(STAMP)
	$(BIN)/python -m experiments.benchmarks --cpu_targets

bench_all: $(STAMP)
	$(BIN)/python -m experiments.benchmarks --cpu_all_types

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
