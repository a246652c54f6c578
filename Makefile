# The two commands: `make run` and `make test`. Everything else here serves them.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PORT     ?= 8000
DATA_DIR ?= ./data
export DATA_DIR

.PHONY: run test lint typecheck security workflows pytest torture bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	mkdir -p $(DATA_DIR)
	$(BIN)/gunicorn --config gunicorn.conf.py --bind 127.0.0.1:$(PORT) application:application

test: lint typecheck security workflows pytest

lint: $(VENV)/.dev
	$(BIN)/flake8

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict application.py linkstore gunicorn.conf.py ops tests bench

security: $(VENV)/.dev
	$(BIN)/bandit --quiet --configfile pyproject.toml --recursive application.py linkstore ops bench

workflows: $(VENV)/.dev
	$(BIN)/zizmor --offline --min-severity medium .github/workflows
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

pytest: $(VENV)/.dev
	$(BIN)/pytest --ignore=tests/torture

torture: $(VENV)/.dev
	$(BIN)/pytest tests/torture

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache test-output
