# Everyday targets. `make demo` and `make test` work on a fresh Debian-like machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-newest test-fast test-oldest lint typecheck bench bench-quick clean

# The oldest releases pyproject.toml accepts: `make test` runs the end-to-end tests on them too.
OLDEST := "celery[redis]==5.5.*" "kombu==5.5.*" "redis==5.0.*" "boto3[crt]==1.36.*" "prometheus-client==0.20.*"
OLDEST_VENV := .venv-oldest
E2E_TESTS := tests/test_celery_internals.py tests/test_end_to_end.py tests/test_events.py tests/test_canvas.py \
	tests/test_client.py tests/test_tasks.py tests/test_guest.py tests/test_no_silent_waits.py \
	tests/test_worker_start.py tests/test_find.py tests/test_config_module.py tests/test_structure.py

$(BIN)/s3batch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

## run the whole job on embedded defaults (local redis-server, in-process S3)
demo: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/s3batch demo

## the whole test suite against real redis-server, moto's S3 server and Celery workers, then the end-to-end
## tests again on the oldest supported Celery, kombu, redis-py and boto3
test: test-newest test-oldest

test-newest: $(BIN)/s3batch
	./scripts/ensure-system-packages --test
	$(BIN)/python -m pytest

## the tests of pure modules, without any service (a few seconds)
test-fast: $(BIN)/s3batch
	$(BIN)/python -m pytest -m "not services" -q

$(OLDEST_VENV)/bin/python: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/pip install --quiet -e ".[dev]" $(OLDEST)
	@touch $@

test-oldest: $(OLDEST_VENV)/bin/python
	./scripts/ensure-system-packages --test
	$(OLDEST_VENV)/bin/python -m pytest --first-axes $(E2E_TESTS)

lint: $(BIN)/s3batch
	$(BIN)/ruff check batcher workers tests bench examples
	$(BIN)/ruff format --check batcher workers tests bench examples

## mypy --strict on batcher, workers, tests, examples and bench (the trees are listed in pyproject.toml's [tool.mypy])
typecheck: $(BIN)/s3batch
	$(BIN)/mypy

## the benchmark suite (bench/README.md): every scenario, median of 3 runs, writes bench/results/suite.{json,png};
## then the staging topologies (single node, Redis Cluster with 1-8 lanes), bench/results/topologies.json
bench: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/python -m bench.suite
	$(BIN)/python -m bench.topologies

## a smoke run of the suite: every scenario once with fewer objects, about 2.5 minutes
bench-quick: $(BIN)/s3batch
	./scripts/ensure-system-packages
	$(BIN)/python -m bench.suite --quick
	$(BIN)/python -m bench.topologies --quick

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
