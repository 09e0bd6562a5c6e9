# make demo  - set everything up (.venv) and run the demo: SQLite + the local emulator, no key.
# make test  - set everything up and run lint, type checks and the whole test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unasync install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/convostore demo

lint: $(STAMP)
	$(BIN)/python scripts/unasync.py --check
	$(BIN)/ruff check convostore tests scripts benchmarks
	$(BIN)/ruff format --check convostore tests scripts benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

unasync: $(STAMP)
	$(BIN)/python scripts/unasync.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
