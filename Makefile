# Two commands: `make run` and `make test`. Both create the environment if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test env report peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m bench

test: $(STAMP)
	$(BIN)/python -m pytest

report: $(STAMP)
	$(BIN)/python -m bench.report results/runs --out results

# Optional: peer libraries (torch, torchattacks) for side-by-side scripts in scripts/.
peers: $(STAMP)
	$(BIN)/pip install --quiet -e '.[peers]'

clean:
	rm -rf $(VENV) results/runs multirun

# Every reduced paper preset (conf/experiment/*_reduced.yaml), then results/presets.md from their records.
.PHONY: presets
presets: $(STAMP)
	$(BIN)/python scripts/run_presets.py
