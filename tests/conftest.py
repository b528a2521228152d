"""Session fixtures: a real Spark standalone cluster, Kafka broker and PostgreSQL, and the service.

Everything listens on loopback and is stopped by PID at the end of the session.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from poller.devstack import FAST_DRIVER_JAVA_OPTIONS, KafkaBroker, Postgres, SparkStandalone
from tests.databases import new_pg_database
from tests.replicas import Replica
from tests.support import JOB_SCRIPT, DelayingProxy, EventReader, ServiceProcess

# -- infrastructure ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs")
    (path / "job.py").write_text(JOB_SCRIPT)
    return path


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory, jobs_dir: Path) -> Iterator[SparkStandalone]:
    cluster = SparkStandalone(
        tmp_path_factory.mktemp("spark"),
        cores=4,
        memory="8g",
        # Lets a test see Spark itself refuse a submission (HTTP 400).
        extra_conf={"spark.master.rest.allowedAppResourcePatterns": f"file:{jobs_dir}/.*"},
    )
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("pg")).start()
    yield server
    server.stop()


@pytest.fixture
def own_spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkStandalone]:
    """A cluster of the test's own, so restarting or freezing it troubles no other test."""
    cluster = SparkStandalone(tmp_path_factory.mktemp("own-spark"), cores=2, memory="2g").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Postgres]:
    """A PostgreSQL server of the test's own, so stopping or freezing it troubles no other test."""
    server = Postgres(tmp_path / "pg").start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'poller.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def topic(kafka: KafkaBroker) -> str:
    name = f"completions-{uuid.uuid4().hex[:10]}"
    kafka.create_topic(name, partitions=1)
    return name


# -- the service under test ----------------------------------------------------------------------


ServiceFactory = Callable[..., ServiceProcess]
SlowSpark = Callable[[str, float], DelayingProxy]
JobBody = Callable[..., dict[str, Any]]


def base_env(
    spark: SparkStandalone, kafka: KafkaBroker, topic: str, workdir: Path
) -> dict[str, str]:
    """The environment of a service wired to the session's Spark and Kafka, on SQLite.

    Polls ask each driver's REST status (a test's proxy sees them); the master's web UI, where
    a failed driver's worker and a lost create's driver are found, is the real one. A lost
    create's driver is looked for 20 s, not 5 min, so a create that never reached Spark ends
    soon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_DATABASE_URL=f"sqlite:///{workdir / 'poller.db'}",
        POLLER_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        POLLER_KAFKA_TOPIC=topic,
        POLLER_SPARK_REST_URL=spark.rest_url,
        POLLER_SPARK_MASTER_URL=spark.master_url,
        POLLER_SPARK_UI_URL=spark.ui_url,
        POLLER_STATUS_SOURCE="rest",
        POLLER_RECOVERY_SEARCH_S="20",
        POLLER_POLL_INTERVAL_SECONDS="1",
        POLLER_LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture
def service_env(
    spark: SparkStandalone, kafka: KafkaBroker, topic: str, tmp_path: Path
) -> dict[str, str]:
    return base_env(spark, kafka, topic, tmp_path)


@pytest.fixture
def slow_spark(spark: SparkStandalone) -> Iterator[SlowSpark]:
    """Spark's REST API behind a loopback proxy that holds back its answers to one path (after
    Spark acted): ``slow_spark("/v1/submissions/create", 6)``. Closed after the test."""
    proxies: list[DelayingProxy] = []

    def make(path: str, delay_s: float) -> DelayingProxy:
        proxies.append(DelayingProxy(spark.rest_url, path, delay_s))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def start_service(
    service_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ServiceFactory]:
    """Start the service with the test's env plus overrides; every one started is stopped after.
    The test's event reader, if it has one, names the latest one's phases when a wait fails."""
    started: list[ServiceProcess] = []

    def factory(**overrides: str) -> ServiceProcess:
        env = {**service_env, **overrides}
        if "POLLER_SPARK_MASTER_URL" in overrides and "POLLER_SPARK_UI_URL" not in overrides:
            del env["POLLER_SPARK_UI_URL"]  # another cluster: not the session cluster's web UI
        svc = ServiceProcess(env, tmp_path / "service.log")
        started.append(svc)
        if "events" in request.fixturenames:
            reader: EventReader = request.getfixturevalue("events")
            reader.service = svc
        return svc.start()

    yield factory
    for svc in started:
        if svc.running():
            svc.terminate()


# -- jobs and events -----------------------------------------------------------------------------


@pytest.fixture
def job_body(jobs_dir: Path) -> JobBody:
    """A /submit ``job`` that sleeps ``seconds`` then exits with ``exit_code``."""

    def make(seconds: float = 0, exit_code: int = 0) -> dict[str, Any]:
        return {
            "app_resource": f"file:{jobs_dir / 'job.py'}",
            "app_args": [str(seconds), str(exit_code)],
            "spark_properties": {
                "spark.pyspark.python": sys.executable,
                "spark.driver.memory": "256m",
                "spark.driver.extraJavaOptions": FAST_DRIVER_JAVA_OPTIONS,
            },
        }

    return make


@pytest.fixture
def events(kafka: KafkaBroker, topic: str) -> Iterator[EventReader]:
    reader = EventReader(kafka.bootstrap_servers, topic)
    yield reader
    reader.close()


@pytest.fixture
def replicas(
    service_env: dict[str, str], postgres: Postgres, spark: SparkStandalone, tmp_path: Path
) -> Iterator[list[Replica]]:
    """Three slots on one new PostgreSQL database, each with its own proxy to the real Spark;
    polls ask each driver's REST status (``base_env``), so every poll is a call a proxy sees."""
    env = {
        **service_env,
        "POLLER_DATABASE_URL": new_pg_database(postgres),
    }
    slots = [Replica(name, env, DelayingProxy(spark.rest_url, "", 0), tmp_path) for name in "abc"]
    yield slots
    for slot in slots:
        for svc in slot.past:
            if svc.running():
                svc.terminate()
        slot.proxy.close()
