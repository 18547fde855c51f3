# Set-up and everyday commands. `make train` and `make test` work on a fresh machine: they build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 import together (clean-fid needs torchvision)
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup train test check lint format clean

$(BIN)/activate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]" $(TORCH)
	touch $(BIN)/activate

setup: $(BIN)/activate

train: setup
	$(BIN)/python -m wadi.train $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check wadi tests experiments
	$(BIN)/ruff format --check wadi tests experiments

format: setup
	$(BIN)/ruff check --fix wadi tests experiments
	$(BIN)/ruff format wadi tests experiments

check: lint test

# Caches and build files only: runs (outputs/, Hydra's multirun/) hold checkpoints and are never removed here.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
