# The two commands: `make run` and `make test`. Everything else here serves them.

# The Python that creates .venv: PYTHON=... if given; else python3.11 (what Elastic
# Beanstalk runs); else the newest python3.X on PATH with X >= 12; else python3. Shell
# built-ins only, so any PATH will do. Too old a Python stops at $(BIN)/python below.
define pick_python
newest=0; IFS=:; \
for dir in $$PATH; do for path in "$$dir"/python3.*; do \
  minor=$${path##*/python3.}; \
  case $$minor in ""|*[!0-9]*) continue;; esac; [ -x "$$path" ] || continue; \
  [ "$$minor" = 11 ] && { echo python3.11; exit; }; \
  [ "$$minor" -gt "$$newest" ] && newest=$$minor; \
done; done; \
if [ "$$newest" -ge 12 ]; then echo "python3.$$newest"; \
elif command -v python3 >/dev/null || [ "$$newest" = 0 ]; then echo python3; \
else echo "python3.$$newest"; fi
endef
PYTHON ?= $(shell $(pick_python))
PYTHON_NEEDED := 3.11
python_found = $(or $(shell $(PYTHON) --version 2>/dev/null),no $(PYTHON) on PATH)
python_ok = $(shell case '$(python_found)' in ('Python 3.1'[1-9]*|'Python 3.'[2-9][0-9]*) \
                    echo yes;; esac)

VENV   := .venv
BIN    := $(VENV)/bin
# The eb CLI's own environment: its pins clash with the dev tools (requirements-deploy.txt).
EB_VENV := .venv-eb
PORT     ?= 8000
DATA_DIR ?= ./data
export DATA_DIR

.PHONY: run test lint typecheck security workflows pytest torture bench clean eb-venv

$(BIN)/python:
	$(if $(python_ok),,$(error Python $(PYTHON_NEEDED) or newer is needed, found \
	    $(python_found) ($(PYTHON)): install one, or name it with make PYTHON=/path/to/python3))
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
	$(BIN)/mypy --strict application.py linkrules.py linkstore visitors.py visits.py gunicorn.conf.py ops tests bench

security: $(VENV)/.dev
	$(BIN)/bandit --quiet --configfile pyproject.toml --recursive application.py linkrules.py linkstore visitors.py visits.py ops bench

workflows: $(VENV)/.dev
	$(BIN)/zizmor --offline --min-severity medium .github/workflows
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# Most tests run in PYTEST_WORKERS processes (pytest-xdist); those marked "alone" (time
# bounds, load generators, machine-wide process scans) then run one at a time.
PYTEST_WORKERS ?= 2
pytest: $(VENV)/.dev $(EB_VENV)/.installed
	$(BIN)/pytest --ignore=tests/torture -m "not alone" --numprocesses $(PYTEST_WORKERS)
	$(BIN)/pytest --ignore=tests/torture -m alone

torture: $(VENV)/.dev
	$(BIN)/pytest tests/torture

bench: $(VENV)/.dev
	$(BIN)/python -m bench
	$(BIN)/python -m bench.visits
	$(BIN)/python -m bench.visits --worker-class gthread --out bench/results/gthread
	$(BIN)/python -m bench.visit_parts
	$(BIN)/python -m bench.visit_code
	$(BIN)/python -m bench.pg_details
	$(BIN)/python -m bench.visit_totals

# Release a good version and one bad version of each failure class (A-E) through real
# nginx under steady traffic; prints the table and writes test-output/rehearsal.json.
.PHONY: rehearse
rehearse: $(VENV)/.dev
	$(BIN)/python -m ops.rehearse

clean:
	rm -rf $(VENV) $(EB_VENV) .mypy_cache .pytest_cache test-output
