# Two commands: `make run` and `make test`. Both create the environment if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast env report peers clean

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

# While developing: everything but the end-to-end runs marked slow (make test, which CI runs, includes them).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

report: $(STAMP)
	$(BIN)/python -m bench.report results/runs --out results

# Optional: peer libraries (torch, torchattacks) for side-by-side scripts in scripts/.
peers: $(STAMP)
	$(BIN)/pip install --quiet -e '.[peers]'

clean:
	rm -rf $(VENV) results/runs results/checkpoints multirun

# Side-by-side PGD-40 against torchattacks; writes results/peer_pgd.md. Installs the `peers` extra into .venv
# (about 5.5 GB of torch) unless PEERS_PYTHON names an interpreter that already has it, e.g.
# `make peers-pgd PEERS_PYTHON=/tmp/venv-peers/bin/python`.
.PHONY: peers-pgd
PEERS_PYTHON ?=
PEERS_RUN := $(or $(PEERS_PYTHON),$(BIN)/python)
# An interpreter named by PEERS_PYTHON gets this package (and its dependencies) installed first, so the
# scripts can import `bench` there.
.PHONY: peers-env
peers-env: $(if $(PEERS_PYTHON),,peers)
	$(if $(PEERS_PYTHON),$(PEERS_PYTHON) -m pip install --quiet -e .,@true)

peers-pgd: peers-env
	$(PEERS_RUN) scripts/peer_pgd.py

# Every known bad input and fault case, run for real; writes results/bad_inputs.md (about 5 minutes).
.PHONY: bad-inputs
bad-inputs: $(STAMP)
	$(BIN)/python scripts/bad_inputs.py

# Every reduced paper preset (conf/experiment/*_reduced.yaml), then results/presets.md from their records.
.PHONY: presets
presets: $(STAMP)
	$(BIN)/python scripts/run_presets.py
	$(MAKE) leaderboard site

# Parity with torchattacks' AutoAttack (standard) on 1,000 mnist5k test images, standard and PGD-trained
# cnn_small; writes results/peer_autoattack.md. Needs torch + torchattacks: pass PEERS_PYTHON=/path/to/python
# of an environment that has them (e.g. /tmp/venv-peers/bin/python), else the `peers` extra is installed.
.PHONY: peers-autoattack
peers-autoattack: peers-env
	$(PEERS_RUN) scripts/peer_autoattack.py

# Our DP-SGD (jax-privacy) against Opacus on cnn_small, mnist5k: step time and epsilon of each accountant;
# writes results/peer_opacus.md. Needs torch + opacus: pass PEERS_PYTHON=/path/to/python of an environment
# that has them (e.g. /tmp/venv-peers/bin/python), else the `peers` extra is installed.
.PHONY: peers-opacus
peers-opacus: peers-env
	$(PEERS_RUN) scripts/peer_opacus.py

# Leaderboard entries (results/leaderboard/entries, one JSON per model x dataset x threat) from every run's records,
# then the leaderboards (Markdown, CSV) and model cards (with Hugging Face model-index YAML) from the entries.
# LEADERBOARD_RUNS names other run folders; `make leaderboard LEADERBOARD_RUNS=` with nothing rebuilds the pages
# from the committed entries only.
.PHONY: leaderboard site reproduce
LEADERBOARD_RUNS ?= results/runs
leaderboard: $(STAMP)
	$(if $(wildcard $(LEADERBOARD_RUNS)),$(BIN)/python -m bench.leaderboard $(LEADERBOARD_RUNS) --out results/leaderboard,$(BIN)/python -m bench.leaderboard --rebuild --out results/leaderboard)

# The static site (results/site/index.html, works offline from file://) from the committed entries only.
site: $(STAMP)
	$(BIN)/python -m bench.publish.site results/leaderboard --out results/site

# Run a preset and print its verdicts against the paper and its earlier measured number:
# `make reproduce PRESET=madry_mnist_reduced` (FULL=1 for its full-scale preset).
PRESET ?= standard_mnist_reduced
reproduce: $(STAMP)
	$(BIN)/python -m bench.reproduce $(PRESET) $(if $(FULL),--full,)

# Every side-by-side speed ratio, one after another on this machine, then results/speed.md from their reports:
# PGD-40 vs torchattacks and vs foolbox on JAX, the AutoAttack suite vs torchattacks (needs the peers:
# PEERS_PYTHON=/path/to/python or the `peers` extra), DP-SGD steps vs a non-private step and vs Opacus, CROWN-IBP
# vs IBP steps, the matmul peak and PGD's share of it. About 17 minutes; run it on a quiet machine (the reports
# record the load).
.PHONY: bench
bench: peers-env
	$(PEERS_RUN) scripts/peer_pgd.py --repeats 3
	$(PEERS_RUN) scripts/peer_autoattack.py --threads 2
	$(BIN)/python scripts/dp_speed.py --epochs 0
	$(BIN)/python scripts/certified_speed.py --label bench --skip-bounds
	$(PEERS_RUN) scripts/peer_opacus.py
	$(BIN)/python scripts/speed_report.py
