# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo demo-broken bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/mlchaos demo

demo-broken: setup
	$(BIN)/mlchaos demo --broken

bench: setup
	$(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check mlchaos_steps tests benchmarks dags

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
