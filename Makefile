# medfed: the two commands of the README. Both create .venv and install medfed if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Hydra's Optuna sweeper (medfed simulate -m hydra/sweeper=optuna): its metadata pins optuna<3,
# which clashes with flwr, so it goes in without dependencies on the optuna of the `tune` extra.
OPTUNA_SWEEPER := 1.3.0
STAMP  := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: demo test test-fast check lint bench sweep clean install

install: $(STAMP)

# torch is pinned to the CPU wheel: an unpinned torch pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,tune]"
	$(BIN)/python -m pip install --quiet --no-deps "hydra-optuna-sweeper==$(OPTUNA_SWEEPER)"
	touch $(STAMP)

## A 4-hospital diagnosis federation on synthetic data; prints where the results are.
demo: $(STAMP)
	$(BIN)/medfed simulate task=diagnosis federation.hospitals=4 compare=true

## The whole test suite (unit, property, end-to-end on every engine).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not serial"
	$(BIN)/python -m pytest -q -m serial

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

## What CI checks before the tests: lint, formatting, types (zero errors) and the import contracts.
PACKAGES := infra server client strategies models
check: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests benchmarks
	$(BIN)/ruff format --check $(PACKAGES) tests benchmarks
	mkdir -p build/typecheck/medfed
	for p in $(PACKAGES); do ln -sfn ../../../$$p build/typecheck/medfed/$$p; done
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml \
	    $(foreach p,$(PACKAGES),-p medfed.$(p))
	$(BIN)/lint-imports

lint: check

bench: $(STAMP)
	$(BIN)/python benchmarks/sim_overhead.py
	$(BIN)/python benchmarks/wire_bytes.py

## Privacy/utility sweep: diagnosis federation at epsilon 0.5..8 and without DP (CSV + plot).
sweep: $(STAMP)
	$(BIN)/python benchmarks/privacy_sweep.py --out outputs/privacy-sweep

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
