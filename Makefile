# Two entry points: `make demo` (the offline demo) and `make test` (the whole suite).
# Both create the virtual environment on first use; nothing else is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]' --group dev
	touch $@

demo: $(VENV)/.installed
	$(BIN)/memori-core demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	scripts/with-postgres $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/recall_latency.py
