# Two entry points: `make run` builds the demo dataset version, `make test` runs the
# test suite. Both create .venv and install the project into it when needed.
# `make bench N=20000` writes a benchmark corpus of N images when it is missing and
# measures imgprep against the decode limit (see BENCHMARKS.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imgprep-installed
DEMO_DATA ?= data/demo
N ?= 20000
CORPUS := benchmarks/corpus/n$(N)

.PHONY: run test bench install clean

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

bench: $(STAMP)
	test -d $(CORPUS) || ( rm -rf $(CORPUS).partial && \
	  $(BIN)/python benchmarks/make_corpus.py --count $(N) --seed 0 \
	    --out $(CORPUS).partial && mv $(CORPUS).partial $(CORPUS) )
	$(BIN)/python benchmarks/run.py --corpus $(CORPUS) --repeat 3 --smote

clean:
	rm -rf $(VENV) data/demo stores/demo .pytest_cache
