"""Reaches every dependency the configuration names, once, with the service's own adapters:
the database (SELECT 1), the Kafka broker (metadata, our topic), each Spark master of each
cluster (its REST server, ALIVE). For ``spark-poller check``, before a start or while debugging."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl
from sqlalchemy.engine import make_url

from poller.config import ClusterConfig, Settings
from poller.db import create_db_engine
from poller.errors import SparkRejected, SparkUnavailable
from poller.events import EventPublisher, producer_config
from poller.masking import Masker, describe_failure, secret_values
from poller.spark import SparkClient
from poller.store import RequestStore

# A well-formed driver id no master has made: its status answer says whether the master is ALIVE.
PROBE_DRIVER = "driver-00000000000000-0000"
KAFKA_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4}  {self.name}: {self.detail}"


Check = Callable[[], list[CheckResult]]


def all_checks(settings: Settings) -> list[Check]:
    """The checks of every dependency, in the order they are shown; Spark's give one result
    per master."""
    masker = Masker(secret_values(settings))
    checks: list[Check] = [
        lambda: [check_database(settings, masker)],
        lambda: [check_kafka(settings, masker)],
    ]
    for name, cluster in settings.clusters.items():
        checks.append(functools.partial(check_cluster, name, cluster, settings, masker))
    return checks


def run_checks(settings: Settings) -> list[CheckResult]:
    """Every check at once (the slowest bounds the wait); the results in a fixed order."""
    checks = all_checks(settings)
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        futures = [pool.submit(check) for check in checks]
    return [result for future in futures for result in future.result()]


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist yet (connecting would make it)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database or "")
    return None if path.exists() else path


def check_database(settings: Settings, masker: Masker) -> CheckResult:
    """SELECT 1 within the database timeout. A SQLite file not made yet is fine when its folder
    exists: the service makes it at start (and this check does not)."""
    url = settings.database_url.get_secret_value()
    try:
        backend = make_url(url).get_backend_name()
    except Exception as exc:
        return CheckResult("database", False, describe_failure(exc, masker))
    missing = missing_sqlite_file(url)
    if missing is not None:
        if missing.parent.is_dir():
            return CheckResult("database", True, "SQLite file not made yet (made at start)")
        return CheckResult("database", False, "the SQLite file's folder does not exist")
    started = time.monotonic()
    try:
        # A URL naming a driver that is not installed fails here: one FAIL line, like the rest.
        engine = create_db_engine(url, pool_size=1, timeout_s=settings.database_timeout_s)
    except Exception as exc:
        return CheckResult("database", False, describe_failure(exc, masker))
    try:
        RequestStore(engine).ping()
    except Exception as exc:
        return CheckResult("database", False, describe_failure(exc, masker))
    finally:
        engine.dispose()
    took_ms = (time.monotonic() - started) * 1000
    return CheckResult("database", True, f"{backend} answered SELECT 1 in {took_ms:.0f} ms")


def check_kafka(settings: Settings, masker: Masker) -> CheckResult:
    """The broker answers a metadata request and knows our topic (never created here)."""
    name = "kafka"
    try:
        publisher = EventPublisher(
            producer_config(settings),
            settings.kafka_topic,
            settings.event_source,
            settings.kafka_delivery_timeout_s,
        )
    except Exception as exc:  # librdkafka refused a setting
        return CheckResult(name, False, describe_failure(exc, masker))
    try:
        problem = publisher.problem(KAFKA_CHECK_TIMEOUT_S)
    finally:
        publisher.close(timeout_s=1)
    if problem is not None:
        return CheckResult(name, False, masker(problem))
    return CheckResult(name, True, f"broker answers; topic {settings.kafka_topic} exists")


def check_cluster(
    name: str, cluster: ClusterConfig, settings: Settings, masker: Masker
) -> list[CheckResult]:
    """Each master's REST server, asked for a driver's status as the poll job does.

    With one master, it must be ALIVE. With standby masters (HA), a STANDBY one is fine as long
    as another master of the cluster is ALIVE: that is how such a cluster runs."""
    results: list[tuple[str, str | None, bool]] = []  # label, problem, not alive (but up)
    for url in cluster.rest_bases:
        label = f"spark {name} {_host_port(url)}"
        client = SparkClient(
            name,
            cluster.model_copy(update={"rest_url": (AnyHttpUrl(url),)}),
            settings.spark_timeout_s,
            settings.spark_client_version,
            attempts=1,
            pool_size=1,
        )
        try:
            client.status(PROBE_DRIVER)
        except SparkUnavailable as exc:
            results.append((label, masker(exc.message), "not ALIVE" in exc.message))
        except SparkRejected as exc:
            results.append((label, masker(exc.message), False))
        else:
            results.append((label, None, False))
        finally:
            client.close()
    some_alive = any(problem is None for _, problem, _ in results)
    checked: list[CheckResult] = []
    for label, problem, not_alive in results:
        if problem is None:
            checked.append(CheckResult(label, True, "REST server answers; master ALIVE"))
        elif not_alive and some_alive and len(results) > 1:
            checked.append(CheckResult(label, True, f"standby ({problem})"))
        else:
            checked.append(CheckResult(label, False, problem))
    return checked


def _host_port(url: str) -> str:
    """host:port of a REST URL: never a user or password it may hold."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
