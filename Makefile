# Set-up is incremental: .venv is created, and the package installed into
# it, only when pyproject.toml is newer than the last install.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOB ?= jobs/example.yaml
PYTEST_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

.PHONY: run test test-gateway bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/batcher run $(JOB)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The benchmarks write docs/benchmarks.md; about 10 minutes on 2 cores. BENCH_ARGS=--quick checks
# the harness in about a minute and prints the page instead.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Integration tests against LiteLLM's proxy on loopback; gateway/run.sh sets
# up .venv-gateway, starts and stops the proxy.
test-gateway: $(STAMP)
	PYTHON=$(PYTHON) bash gateway/run.sh $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
