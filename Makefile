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

typecheck: $(BIN)/s3batch
	$(BIN)/mypy

## throughput and PutObject calls against the naive one-PutObject-per-object loop
bench: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/python -m bench.end_to_end --json bench/results/end_to_end.json

bench-quick: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/python -m bench.end_to_end --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
