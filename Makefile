# The two commands: `make run` and `make test`. Everything else here serves them.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# The eb CLI's own environment: its pins clash with the dev tools (requirements-deploy.txt).
EB_VENV := .venv-eb
PORT     ?= 8000
DATA_DIR ?= ./data
export DATA_DIR

.PHONY: run test lint typecheck security workflows pytest torture bench clean eb-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

$(EB_VENV)/.installed: requirements-deploy.txt
	$(PYTHON) -m venv $(EB_VENV)
	$(EB_VENV)/bin/pip install --quiet -r requirements-deploy.txt
	touch $@

eb-venv: $(EB_VENV)/.installed

run: $(VENV)/.runtime
	mkdir -p $(DATA_DIR)
	$(BIN)/gunicorn --config gunicorn.conf.py --bind 127.0.0.1:$(PORT) application:application

test: lint typecheck security workflows pytest

lint: $(VENV)/.dev
	$(BIN)/flake8

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict application.py gunicorn.conf.py ops tests bench

security: $(VENV)/.dev
	$(BIN)/bandit --quiet --configfile pyproject.toml --recursive application.py ops bench

workflows: $(VENV)/.dev
	$(BIN)/zizmor --offline --min-severity medium .github/workflows
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

pytest: $(VENV)/.dev $(EB_VENV)/.installed
	$(BIN)/pytest --ignore=tests/torture

torture: $(VENV)/.dev
	$(BIN)/pytest tests/torture

bench: $(VENV)/.dev
	$(BIN)/python -m bench

# Release a good version and one bad version of each failure class (A-E) through real
# nginx under steady traffic; prints the table and writes test-output/rehearsal.json.
.PHONY: rehearse
rehearse: $(VENV)/.dev
	$(BIN)/python -m ops.rehearse

clean:
	rm -rf $(VENV) $(EB_VENV) .mypy_cache .pytest_cache test-output
