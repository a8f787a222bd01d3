# corral: `make run` starts the service, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pg-binaries chromium bench bench-quick clean

# The server's dependencies, the test tools and Ray (the Ray executor's tests run real
# Ray heads); corral itself editable (its shim is then compiled at the first `corral
# serve`: see docs/design.md). `make run` still serves with the local executor unless
# ARGS says `--executor ray`. Ray is most of the install: a 79 MB wheel, ~285 MB in the
# venv with its dependencies, ~12 s to install here with pip's cache warm (Ray 2.60).
$(STAMP): pyproject.toml setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/corral serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

# PostgreSQL's server binaries, for the tests on PostgreSQL (tests/pg.py starts a
# throw-away cluster with them): initdb on PATH or under /usr/lib/postgresql/*/bin,
# else, when running as root with apt, Debian's package:
#   apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
# Otherwise those tests skip, saying why (and fail under CI=true).
pg-binaries:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
	|| echo "no PostgreSQL server binaries: the tests on PostgreSQL will skip"

# Debian's Chromium, for the dashboard's browser tests (tests/test_dashboard.py drives
# /usr/bin/chromium headless with Playwright; never a browser download of Playwright's
# own), installed like PostgreSQL above when absent. Otherwise those tests skip, saying
# why (and fail under CI=true).
chromium:
	@test -x /usr/bin/chromium \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	|| echo "no /usr/bin/chromium: the dashboard's browser tests will skip"

test: lint typecheck pg-binaries chromium
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
