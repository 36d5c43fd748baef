# paxwal: the commands the README names.  `make test` and `make demo` run `setup` first;
# setup is quick when nothing changed (the stamp is newer than pyproject.toml).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup java psql test demo verify tlc tlc-full mutants impl-mutants check coverage sim bench soak sim-soak clean

setup: $(STAMP) java psql

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "paxwal needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# TLC needs Java 11 or newer: install Debian's headless JRE when we may, else say what to do.
java:
	@scripts/ensure-java

# The computes' clients in tests, the demo and benchmarks: psql and pgbench.
psql:
	@scripts/ensure-psql

test: setup
	$(BIN)/python -m pytest -q

# The failover walk-through with psql (issue 9): exit 0 only if every check held.
demo: setup
	$(BIN)/paxwal demo

# Everything that checks the protocol, in one go (~25 min): chaos, simulation, the corpus,
# the implementation mutants, coverage, TLC on the CI model and every spec mutant.
verify: setup
	$(BIN)/paxwal chaos --seconds 30
	$(BIN)/paxwal sim --seeds 0:500
	$(BIN)/paxwal check traces/accepted
	$(BIN)/paxwal mutants
	$(BIN)/paxwal coverage --sim 0:100
	$(BIN)/paxwal tlc check
	$(BIN)/paxwal tlc mutants

tlc: setup
	$(BIN)/paxwal tlc check --model ci

tlc-full: setup
	$(BIN)/paxwal tlc check --model full

mutants: setup
	$(BIN)/paxwal tlc mutants

# The implementation mutants: deliberate bugs in the cores, each must be caught by the checker.
impl-mutants: setup
	$(BIN)/paxwal mutants

# The accepted corpus through both checkers: the replay, then TLC.
check: setup
	$(BIN)/paxwal check traces/accepted
	$(BIN)/paxwal check --tlc traces/accepted

coverage: setup
	$(BIN)/paxwal coverage --sim 0:100

# A campaign of simulated runs (the issue's bar: 500 seeds, no failure).
sim: setup
	$(BIN)/paxwal sim --seeds 0:500

# Benchmarks print figures beside a baseline measured in the same run.
bench: setup
	$(BIN)/paxwal bench sim
	$(BIN)/paxwal bench trace
	$(BIN)/paxwal bench replay
	$(BIN)/paxwal bench commit
	$(BIN)/paxwal bench ingest
	$(BIN)/paxwal bench getpage
	$(BIN)/paxwal bench branch
	$(BIN)/paxwal bench pageserver-ingest
	$(BIN)/paxwal bench sql
	$(BIN)/paxwal bench failover --seconds 60

# The long chaos runs on a real cluster, on demand: kill -9, pauses and restarts for
# SOAK_SECONDS each (10 minutes by default), under the record load, then under SQL computes;
# `make test` runs a short smoke of each.
SOAK_SECONDS ?= 600
SOAK_SEED ?= 0
soak: setup
	$(BIN)/paxwal chaos --seconds $(SOAK_SECONDS) --seed $(SOAK_SEED)
	$(BIN)/paxwal chaos --sql --seconds $(SOAK_SECONDS) --seed $(SOAK_SEED)

# The long simulator campaign, on demand: 20,000 seeds with longer fault phases.
sim-soak: setup
	$(BIN)/paxwal sim --seeds 0:20000 --steps 6000

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
