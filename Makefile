# Everyday targets. `make demo` and `make test` work on a fresh Debian-like machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck bench bench-quick clean

$(BIN)/s3batch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

## run the whole job on embedded defaults (local redis-server, in-process S3)
demo: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/s3batch demo

## the whole test suite against real redis-server, moto's S3 server and Celery workers
test: $(BIN)/s3batch
	./scripts/ensure-system-packages --test
	$(BIN)/python -m pytest

lint: $(BIN)/s3batch
	$(BIN)/ruff check batcher workers tests bench examples
	$(BIN)/ruff format --check batcher workers tests bench examples

## mypy --strict on batcher, workers, tests, examples and bench (the trees are listed in pyproject.toml's [tool.mypy])
typecheck: $(BIN)/s3batch
	$(BIN)/mypy

## the benchmark suite (bench/README.md): every scenario, median of 3 runs, writes bench/results/suite.{json,png}
bench: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/python -m bench.suite

## a smoke run of the suite: every scenario once with fewer objects, about 2 minutes
bench-quick: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/python -m bench.suite --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
