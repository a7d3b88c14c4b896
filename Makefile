# One-command set-up, tests and demo. `make setup` is idempotent: it rebuilds .venv only when setup.py or the
# constraints change. The pinned torch pair installs first so a loose `torch` requirement cannot pull another build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= train,teacher,export,dev
PYTEST_ARGS ?=

.PHONY: setup test demo weights targets clean-venv

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

clean-venv:
	rm -rf $(VENV)
