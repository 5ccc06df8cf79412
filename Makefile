# The README's quick start: two commands that set up and run, from any fresh shell.
#   make study [ARGS="--configfile config/mnist.yaml"]   the study: snakemake --cores all $(ARGS)
#   make test  [ARGS="tests/test_stats.py -x"]           the tests: pytest $(ARGS)
# Both first run scripts/setup-venv.sh: .venv is created with Python 3.11 when missing and
# `pip install -e ".[test]"` runs only when pyproject.toml changed since the last install.
# The commands run from .venv by path, with .venv/bin first on PATH (the Snakefile's jobs call
# `softmoe`, its onsuccess `dvc`), so no venv needs to be activated.

VENV := .venv
ARGS ?=
IN_VENV = PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: help setup study test

help:
	@echo 'make study [ARGS="..."]   set up .venv, then run the study: snakemake --cores all $$ARGS'
	@echo 'make test  [ARGS="..."]   set up .venv, then run the tests: pytest $$ARGS'

setup:
	@sh scripts/setup-venv.sh

study: setup
	$(IN_VENV) $(VENV)/bin/snakemake --cores all $(ARGS)

test: setup
	$(IN_VENV) $(VENV)/bin/pytest $(ARGS)
