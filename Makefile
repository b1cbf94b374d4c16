# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-cluster install lint typecheck check bench bench-cluster clean

$(STAMP): pyproject.toml tests/node/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=25.1'
	# torch is pinned to the CPU build this project tests with; a looser range pulls CUDA wheels.
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python -m pip install -q -e '.[postgres,diffusers,cluster]' --group dev
	# The official Node SDK for tests/test_node_sdk.py (skipped where node is missing).
	if command -v npm >/dev/null; then npm ci --prefix tests/node --no-audit --no-fund; fi
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/retouch serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/python -m mypy
	$(BIN)/lint-imports
	bash .ci/chromium.sh
	bash .ci/with-postgres.sh $(BIN)/python -m pytest

# The Ray cluster suite alone (it runs inside a loopback-only network namespace; needs root).
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster tests/test_cluster_suite.py

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

bench-cluster: $(STAMP)
	unshare --net sh -c 'ip link set lo up && exec $(BIN)/python bench/cluster.py'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
