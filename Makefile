# imserver — the two commands a new user needs:
#   make run    set up a virtualenv and run the server on the embedded default
#   make test   set up a virtualenv and run lint, type checks and the whole test suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run demo test lint typecheck pytest clean

$(STAMP): pyproject.toml clients/python_sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" -e clients/python_sdk
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m imserver serve --config config/default.toml

# The server, the bots, simulated business systems and a sample org (docs/bots.md, "Demo").
demo: install
	$(BIN)/python -m bots.demo run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) data data-demo .pytest_cache .mypy_cache .ruff_cache .hypothesis
