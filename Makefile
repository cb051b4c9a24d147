# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint setup bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[keras,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/bnfold models/iris_mlp.h5 -o folded.onnx

test: $(STAMP)
	$(BIN)/ruff check bnfold tests models benchmarks
	$(BIN)/ruff format --check bnfold tests models benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow"

# The tests marked slow: every Keras Application to every format, signals at each phase.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check bnfold tests models benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) build *.egg-info folded.onnx
