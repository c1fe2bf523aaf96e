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

# Tests run side by side in 6 processes (pytest-xdist, idle workers steal queued tests): most of them
# wait on servers, recoveries and SLO windows, so 6 workers keep 2 cores busy. TEST_WORKERS=0 runs
# them in this process, one by one.
TEST_WORKERS ?= 6

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

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
