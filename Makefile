# spark-poller: `make demo` brings up the whole local stack; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench java postgres deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

deps: $(STAMP)

# Java 17 runs the local Spark cluster; installed from the distribution when absent.
java:
	@if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then \
		echo "installing Java 17 (openjdk-17-jre-headless) ..."; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless procps; \
	fi

# PostgreSQL server binaries, for the tests that run the job store on PostgreSQL.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
		echo "installing PostgreSQL ..."; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

demo: java deps
	$(PY) -m poller.devstack demo

test: java postgres deps
	$(PY) -m pytest

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: java deps
	$(PY) bench/latency.py
	$(PY) bench/sqlite_sync.py

clean:
	rm -rf $(VENV) .demo *.egg-info .pytest_cache .mypy_cache .ruff_cache
