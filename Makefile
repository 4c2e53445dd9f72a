# Two entry points: `make run` builds the demo dataset version, `make test` runs the
# test suite. Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imgprep-installed
DEMO_DATA ?= data/demo

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/imgprep demo-data $(DEMO_DATA)
	$(BIN)/imgprep run --config config/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data/demo stores/demo .pytest_cache
