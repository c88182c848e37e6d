.PHONY: setup lint format test test-fast demo clean
VENV := .venv
BIN := $(VENV)/bin

setup:
	@bash scripts/setup.sh

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: setup
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

test: lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

demo: setup
	$(BIN)/prunebench doctor
	$(BIN)/prunebench sweep ablations/smoke.yaml
	$(BIN)/prunebench report results/smoke --paper --plot results/smoke/pareto.png

clean:
	rm -rf $(VENV) results/smoke
