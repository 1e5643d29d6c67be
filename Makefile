# Forewarn developer workflow. `make` alone lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NAME ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-unit lint bench clean

help: ## Show this help
	@echo "Forewarn — make targets:"
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'
	@echo "On a fresh machine: 'make demo' runs the system, 'make test' runs every test."

# The virtualenv is rebuilt when pyproject.toml or the constraints change.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11+ is needed)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install Forewarn with every extra (pinned by constraints.txt)

demo: $(STAMP) ## Start the stack and the whole pipeline (Ctrl-C stops)
	$(BIN)/forewarn demo

test: $(STAMP) ## Run every test: unit, property and integration (real Mosquitto + Kafka)
	$(BIN)/pytest

test-unit: $(STAMP) ## Run the tests that need no broker
	$(BIN)/pytest -m "not integration"

lint: $(STAMP) ## ruff + mypy (strict) + the layering contracts (import-linter)
	$(BIN)/ruff check .
	$(BIN)/mypy forewarn edge bridge training scoring dashboard simulators notify
	$(BIN)/lint-imports

bench: $(STAMP) ## Run every benchmark (or one: make bench NAME=bridge); results in bench-results/
	@set -e; if [ -n "$(NAME)" ]; then \
		$(BIN)/python benchmarks/$(NAME).py; \
	else \
		for f in benchmarks/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f; done; \
	fi

clean: ## Remove caches and results (keeps .venv and the stack's data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache bench-results
