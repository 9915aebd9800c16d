PYTHON ?= $(shell command -v python3.12 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info >= (3, 12), "geoct needs Python >= 3.12"'
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python -m geoct.demo --out demo_output

lint: setup
	$(BIN)/ruff check geoct tests benchmarks data_recipes
	$(BIN)/ruff format --check geoct tests benchmarks data_recipes

format: setup
	$(BIN)/ruff format geoct tests benchmarks data_recipes
	$(BIN)/ruff check --fix geoct tests benchmarks data_recipes

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
