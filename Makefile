# Set-up and the two quick-start targets; everything installs into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: smoke test lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

smoke: $(VENV)/.installed
	$(PY) -m study run ablations/smoke.yaml
	$(PY) -m study report ablations/smoke.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff format --check . && $(PY) -m ruff check .
