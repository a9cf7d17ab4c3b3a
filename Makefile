# The commands README.md shows. Everything installs into .venv from pinned versions
# (constraints.txt), so an upstream release cannot break a build between two sessions.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# The PostgreSQL server the benchmarks that measure both backends use (a scratch database on it).

.PHONY: run test validation lint bench install install-test clean translations

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip -c constraints.txt

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## make run: install, create the RECLAIIM demo trial on SQLite (once), serve on http://$(HOST):$(PORT)
## The database is the one SEALROOM_DATABASE_URL / SEALROOM_INSTANCE_DIR name (default
## ./instance/sealroom.db): one that already holds a trial is upgraded and served as it is.
run: $(VENV)/.installed
	$(BIN)/sealroom init-demo --keep-existing
	$(BIN)/sealroom db upgrade
	$(BIN)/sealroom serve --host $(HOST) --port $(PORT)

# The suite runs in TEST_WORKERS pytest-xdist processes (TEST_WORKERS=0: in this process alone);
# every worker makes its own scratch databases, so they share nothing but the servers.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

## make test: install with the test extra and run the whole suite (slow and multi-process tests too)
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

## make validation: the same suite as make test, plus the validation report: each URS
## requirement of docs/requirements.toml, its tests and their outcomes, the configuration under
## test and a scripted demo run, in validation/report.json and validation/report.html. Fails
## when a requirement has no passing test and is not deferred (README: Validation).
validation: $(VENV)/.installed-test
	rm -rf validation
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS) --validation-report validation

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## make bench: the figures README.md quotes (not part of CI; about 15 minutes). Each
## benchmark runs on SQLite and, when BENCH_DATABASE_URL names a PostgreSQL server, there
## too, in scratch databases of that server (BENCH_DATABASE_URL= for SQLite alone).
BENCH_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
BENCH_PG = $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL))
bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/audit.py
	$(BIN)/python benchmarks/randomize.py
	$(BIN)/python benchmarks/randomize.py $(BENCH_PG)
	$(BIN)/python benchmarks/stock.py
	$(BIN)/python benchmarks/load.py $(BENCH_PG)
	$(BIN)/python benchmarks/logsize.py $(BENCH_PG)
	$(BIN)/python benchmarks/verify.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .ruff_cache validation

## make translations: re-extract the web pages' texts, merge them into each catalogue
## (randomizer/web/translations/*/LC_MESSAGES/messages.po) and compile the .mo files
## (committed; a test checks that each .mo matches its .po)
translations: $(VENV)/.installed
	$(BIN)/pybabel -q extract -F babel.cfg -k N_ --no-location --sort-output -o randomizer/web/translations/messages.pot randomizer/web
	$(BIN)/pybabel -q update -i randomizer/web/translations/messages.pot -d randomizer/web/translations --no-fuzzy-matching --width 100
	$(BIN)/pybabel compile --statistics -d randomizer/web/translations
