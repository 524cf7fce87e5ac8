# drift — developer entry points.  `make` (or `make help`) lists the targets.
# Every target that runs Python first runs `setup`, which is idempotent and quick once done.

.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: help setup demo test test-slow bench lint format clean clean-venv

help: ## list the targets
	@echo "drift — make targets:"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables: PYTEST_ARGS, DEMO_ARGS, BENCH_ARGS (passed through), DRIFT_SYSTEM_PYTHON"

setup: ## system packages + the drift extension files (root) or print the commands (user); build .venv
	@bash scripts/setup.sh

demo: setup ## private PostgreSQL + engine server; a real dataset (glove-6b-50d) loaded and queried through SQL
	$(PY) -m drift_engine.demo $(DEMO_ARGS)

test: setup ## fast test suite (unit, integration, real PostgreSQL; not `slow`)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup ## every test, `slow` ones included
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: setup ## reproducible benchmarks (bench/)
	$(PY) -m bench.run $(BENCH_ARGS)

lint: setup ## ruff check + ruff format --check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## remove caches, build output and demo data (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build dist .drift-demo *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

clean-venv: clean ## also remove .venv (the next target rebuilds it)
	rm -rf .venv
