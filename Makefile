# `make run` and `make test` do all their own set-up on a machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check
# Each target installs what it needs once, and again only when the files it installs from
# change: `make run` what the service needs (requirements.txt), `make test` the tests and tools
# too (requirements-dev.txt, which installs this project editable: its pytest plugin's entry
# point is read from pyproject.toml at install time). The test install covers the run one.
RUN_STAMP := $(VENV)/.run-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint format bench clean

$(RUN_STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.txt
	rm -f $(VENV)/.run-*
	touch $(RUN_STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements-dev.txt
	rm -f $(VENV)/.installed-* $(VENV)/.run-*
	touch $(STAMP) $(RUN_STAMP)

# With Redis state (WORKFLOW_STATE_URL, else REDIS_URL) the web server and one run worker, under
# honcho (deploy/Procfile.run, which keeps the caller's PORT); without, the web server alone,
# which runs workflows itself (docs/runs.md).
run: $(RUN_STAMP)
	@case "$${WORKFLOW_STATE_URL:-$$REDIS_URL}" in \
	  redis*|rediss*|unix*) RUN_PORT="$${PORT:-}" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	    $(VENV)/bin/honcho -f deploy/Procfile.run -d . start ;; \
	  *) $(VENV)/bin/gunicorn -c deploy/gunicorn.conf.py service.wsgi:app ;; \
	esac

# The in-process groups (unit, contract) on two processes, then the groups that start servers,
# browsers and timing-sensitive processes of their own, one test at a time.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 tests/unit tests/contract
	$(PY) -m pytest tests/integration tests/browser

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Instructions per request under callgrind, then req/s; BENCH_NO_RPS=1: the counts only.
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
