# Every target sets up its own environment: a .venv it creates or reuses, torch==2.13.0 unless torch is
# already importable there or TORCH_SPEC says otherwise (e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." on GPUs).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.marionet-installed

.PHONY: setup test demo clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: setup
	$(BIN)/marionet demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
