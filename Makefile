# `make run` and `make test` do all their own set-up on a machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pyproject.toml too: requirements-dev.txt installs this project (`-e .`), whose entry points
# (the pytest plugin) are read at install time.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# With Redis state (WORKFLOW_STATE_URL, else REDIS_URL) the web server and one run worker, under
# honcho (Procfile); without, the web server alone, which runs workflows itself (docs/runs.md).
run: $(STAMP)
	@case "$${WORKFLOW_STATE_URL:-$$REDIS_URL}" in \
	  redis*|rediss*|unix*) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho -f Procfile start ;; \
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

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
