# Two commands do all the set-up on a fresh machine:
#   make run    virtualenv + install + embedded assets, then the default federation as a Ray simulation
#   make test   virtualenv + install + embedded assets, then the test suite
#   make bench EXPERIMENT=benchmarks/experiments/<name>.toml   one experiment, every variant and seed
#                                                            (no EXPERIMENT: the list of experiments)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SUPERNODES ?= 4
CPUS ?= 2
RUN_CONFIG ?=
# flwr 1.39 otherwise installs the app's dependencies into a fresh environment on every run
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
EXPERIMENT ?=
BENCH_ARGS ?=

.PHONY: setup run test lint bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,llm]"
	touch $@

setup: $(INSTALLED)
	$(BIN)/fedlayer assets fetch

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fedlayer simulate --supernodes $(SUPERNODES) --cpus $(CPUS) \
		--run-config "output.dir='$(CURDIR)/outputs' $(RUN_CONFIG)"

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.run $(EXPERIMENT) $(BENCH_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .flwr outputs .pytest_cache .ruff_cache
