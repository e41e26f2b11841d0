# Visual-similarity shop: `make run` starts it, `make test` tests it. `make help` lists the rest.
# Variables passed on the command line reach the app as environment variables, e.g.
#   make run CATALOG_PATH=/path/to/catalogue PORT=5001
#   make run DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp
REQUIREMENTS := requirements.txt requirements-ml.txt requirements-dev.txt constraints.txt

export PYTHON

.PHONY: help setup run web worker test test-all lint format bench clean distclean \
	readme-config readme-config-check lock

help: ## Show this list
	@echo "Usage: make TARGET   (quick start: make run, then make test)"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-20s %s\n", $$1, $$2}'

$(STAMP): $(REQUIREMENTS)
	@scripts/setup.sh

setup: $(STAMP) ## Create .venv and install the pinned requirements (skipped when up to date)
	@echo "Python packages in $(VENV) are up to date."

run: setup ## Set up, import the catalogue, start a worker and the web server (http://127.0.0.1:5000/)
	@scripts/run.sh all

web: setup ## Start the web server alone (gunicorn on 127.0.0.1:$PORT, default 5000)
	@scripts/run.sh web

worker: setup ## Start the Celery worker alone, in the foreground (queues ml, index, default)
	@scripts/run.sh worker

test: setup ## Run the tests, slow ones excepted (installs Chromium for browser tests as root)
	@scripts/test.sh -m "not slow" $(PYTEST_ARGS)

test-all: setup ## Run every test, slow ones (real model weights, full catalogue) included
	@scripts/test.sh $(PYTEST_ARGS)

lint: setup ## Check the code with ruff
	$(VENV)/bin/ruff check .

format: setup ## Format the code with ruff and apply ruff's safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## Run the benchmarks in bench/ (pass options with BENCH_ARGS=...)
	@found=0; for f in bench/*.py; do \
		[ -e "$$f" ] || continue; \
		case "$$(basename "$$f")" in _*) continue ;; esac; \
		found=1; echo "==> $$f"; \
		PYTHONPATH="$(CURDIR)" $(PY) "$$f" $(BENCH_ARGS) || exit 1; \
	done; \
	[ $$found -eq 1 ] || echo "No benchmarks in bench/ yet."

readme-config: setup ## Regenerate README.md's configuration table from webapp/config.py
	@PYTHONPATH="$(CURDIR)" $(PY) scripts/readme_config.py

readme-config-check: setup ## Fail when README.md's configuration table is out of date
	@PYTHONPATH="$(CURDIR)" $(PY) scripts/readme_config.py --check

lock: setup ## Re-pin constraints.txt to the packages installed in .venv
	$(PY) -m pip freeze --exclude-editable > constraints.txt
	@echo "constraints.txt updated: review the diff, then commit it."

clean: ## Remove caches, logs and pid files (keeps .venv, the database and media)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .coverage htmlcov instance/logs instance/worker.pid

distclean: clean ## Also remove the virtualenv
	rm -rf $(VENV)
