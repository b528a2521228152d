"""``spark-poller`` commands as an operator runs them: against a running service, the real
Spark, Kafka and databases, each in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from poller import migrate
from poller.devstack import Postgres, SparkStandalone, free_port, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, NotAliveProxy, ServiceProcess, check_event

TOKEN = "cli-token-5f0e"
DB_PASSWORD = "cli-SECRET-pw-61aa"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def cli(*args: str, env: dict[str, str], timeout_s: float = 120) -> Run:
    """``spark-poller ARGS`` in a process of its own, the way a shell runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "poller", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def service(start_service: ServiceFactory) -> ServiceProcess:
    return start_service(POLLER_API_TOKEN=TOKEN)


@pytest.fixture
def client_env(service: ServiceProcess, service_env: dict[str, str]) -> dict[str, str]:
    """What a shell next to the service has: its URL and token, nothing else of ours."""
    env = {k: v for k, v in service_env.items() if not k.startswith("POLLER_")}
    return {**env, "POLLER_URL": service.url, "POLLER_API_TOKEN": TOKEN}


def submit(service: ServiceProcess, request_id: str, body: dict[str, object]) -> str:
    answer = service.post(
        "/submit",
        json={"request_id": request_id, "job": body},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["submission_id"])


def test_jobs_list_show_republish_and_cancel(
    service: ServiceProcess, client_env: dict[str, str], job_body: JobBody, events: EventReader
) -> None:
    short = submit(service, "cli-short", job_body())
    submit(service, "cli-long", job_body(seconds=300))
    events.wait_for_keys({"cli-short"})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(
        lambda: service.get("/jobs/cli-long", headers=auth).json()["state"] == "RUNNING",
        60,
        "cli-long running",
    )

    table = cli("jobs", "list", env=client_env)
    assert table.code == 0, table.err
    header, *rows = table.lines
    assert header.split()[:5] == ["REQUEST_ID", "CLUSTER", "SUBMISSION_ID", "STATE", "PHASE"]
    assert [row.split()[0] for row in rows] == ["cli-short", "cli-long"]  # oldest first
    assert rows[0].split()[1:5] == ["default", short, "FINISHED", "done"]
    assert table.err.strip() == "2 of 2 request(s)"

    listed = cli("jobs", "list", "--json", env=client_env)
    assert listed.code == 0, listed.err
    page = json.loads(listed.out)
    assert [r["request_id"] for r in page["items"]] == ["cli-short", "cli-long"]
    assert (page["total"], page["next_cursor"]) == (2, None)

    first = cli("jobs", "list", "--limit", "1", env=client_env)
    assert [row.split()[0] for row in first.lines[1:]] == ["cli-short"]
    assert "1 of 2 request(s) shown; --all lists every one" in first.err
    running = cli("jobs", "list", "--state", "running", "--all", "--json", env=client_env)
    assert [r["request_id"] for r in json.loads(running.out)["items"]] == ["cli-long"]

    shown = cli("jobs", "show", "cli-short", env=client_env)
    assert shown.code == 0, shown.err
    fields = dict(line.split(maxsplit=1) for line in shown.lines)
    assert (fields["state"], fields["phase"], fields["submission_id"]) == (
        "FINISHED",
        "done",
        short,
    )
    as_json = json.loads(cli("jobs", "show", "cli-short", "--json", env=client_env).out)
    assert as_json == service.get("/jobs/cli-short", headers=auth).json()

    early = cli("jobs", "republish", "cli-long", env=client_env)
    assert early.code == 6, early.err
    assert "still in flight" in early.err
    republished = cli("jobs", "republish", "cli-short", env=client_env)
    assert republished.code == 0, republished.err
    [original, copy] = events.wait_for_keys({"cli-short"}, copies=2)["cli-short"]
    assert copy.value == original.value
    assert republished.out == (
        f"cli-short: its FINISHED event {original.value['event_id']} is on the topic again\n"
    )

    cancelled = cli("jobs", "cancel", "cli-long", "--kill", env=client_env)
    assert cancelled.code == 0, cancelled.err
    assert cancelled.lines[0].startswith("cli-long: "), cancelled.out
    [event] = events.wait_for_keys({"cli-long"})["cli-long"]
    assert event.value["state"] == "CANCELLED"
    again = cli("jobs", "cancel", "cli-long", "--json", env=client_env)
    assert again.code == 6
    assert again.out == ""
    assert again.err == "error: conflict (409): request 'cli-long' already ended (CANCELLED)\n"


def test_jobs_errors_are_one_line_and_an_exit_code(client_env: dict[str, str]) -> None:
    unknown = cli("jobs", "show", "no-such-request", env=client_env)
    assert (unknown.code, unknown.out) == (5, "")
    assert unknown.err == "error: not found (404): no request 'no-such-request'\n"

    wrong = cli("jobs", "list", env={**client_env, "POLLER_API_TOKEN": "wrong"})
    assert wrong.code == 4
    assert wrong.err == "error: unauthorized (401): the token in POLLER_API_TOKEN was refused\n"
    missing = cli(
        "jobs", "list", env={k: v for k, v in client_env.items() if k != "POLLER_API_TOKEN"}
    )
    assert missing.code == 4
    assert "set POLLER_API_TOKEN" in missing.err

    closed = f"http://127.0.0.1:{free_port()}"
    refused = cli("jobs", "cancel", "x", "--url", closed, env=client_env)
    assert refused.code == 3
    assert refused.err == f"error: cannot reach the service at {closed}: connection refused\n"


@pytest.fixture
def standby(spark: SparkStandalone) -> Iterator[NotAliveProxy]:
    """The session's master seen through a proxy that answers as a STANDBY master."""
    proxy = NotAliveProxy(spark.rest_url, state="STANDBY")
    yield proxy
    proxy.close()


def test_check_passes_against_the_real_stack(
    service_env: dict[str, str],
    postgres: Postgres,
    spark: SparkStandalone,
    standby: NotAliveProxy,
) -> None:
    """With standby masters (HA), a STANDBY one passes beside the ALIVE one."""
    clusters = {"ha": {"rest_url": [standby.url, spark.rest_url], "master_url": spark.master_url}}
    env = {
        **service_env,
        "POLLER_DATABASE_URL": postgres.url,
        "POLLER_CLUSTERS": json.dumps(clusters),
    }
    done = cli("check", env=env)
    assert done.code == 0, done.out + done.err
    lines = {line.split(":")[0].split(maxsplit=1)[1]: line for line in done.lines}
    assert lines["database"].startswith("ok    database: postgresql answered SELECT 1 in ")
    assert lines["kafka"] == (
        f"ok    kafka: broker answers; topic {service_env['POLLER_KAFKA_TOPIC']} exists"
    )
    rest_port = spark.rest_url.rsplit(":", 1)[1]
    standby_port = standby.url.rsplit(":", 1)[1]
    assert done.lines[2:] == [
        f"ok    spark default 127.0.0.1:{rest_port}: REST server answers; master ALIVE",
        f"ok    spark ha 127.0.0.1:{standby_port}: standby (the master of Spark cluster 'ha' is"
        " STANDBY, not ALIVE)",
        f"ok    spark ha 127.0.0.1:{rest_port}: REST server answers; master ALIVE",
    ], done.out


def test_check_names_each_failed_dependency_without_secrets(
    service_env: dict[str, str], spark: SparkStandalone, standby: NotAliveProxy
) -> None:
    closed_rest, closed_broker, closed_db = free_port(), free_port(), free_port()
    clusters = {"lab": {"rest_url": standby.url, "master_url": spark.master_url}}
    env = {
        **service_env,
        "POLLER_SPARK_REST_URL": f"http://127.0.0.1:{closed_rest}",
        "POLLER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_broker}",
        "POLLER_DATABASE_URL": f"postgresql+psycopg://poller:{DB_PASSWORD}@127.0.0.1:{closed_db}/p",
        "POLLER_CLUSTERS": json.dumps(clusters),
    }
    done = cli("check", env=env)
    assert done.code == 1, done.out + done.err
    lines = {line.split(":")[0].split(maxsplit=1)[1]: line for line in done.lines}
    assert lines["database"].startswith("FAIL  database: database unavailable: OperationalError")
    assert lines["kafka"] == "FAIL  kafka: broker unreachable"
    assert lines["spark default 127.0.0.1"].startswith(
        f"FAIL  spark default 127.0.0.1:{closed_rest}: Spark cluster 'default' unreachable"
    )
    port = standby.url.rsplit(":", 1)[1]
    assert lines["spark lab 127.0.0.1"] == (
        f"FAIL  spark lab 127.0.0.1:{port}: the master of Spark cluster 'lab' is STANDBY, not ALIVE"
    )
    assert DB_PASSWORD not in done.out + done.err

    invalid = cli("check", env={**service_env, "POLLER_POLL_INTERVAL_SECONDS": "-1"})
    assert invalid.code == 2
    assert invalid.err.startswith("invalid configuration: POLLER_POLL_INTERVAL_SECONDS")


def test_events_tail_shows_a_real_jobs_event(
    service: ServiceProcess,
    service_env: dict[str, str],
    job_body: JobBody,
    events: EventReader,
) -> None:
    submission_id = submit(service, "tailed", job_body())
    submit(service, "not-tailed", job_body())
    events.wait_for_keys({"tailed", "not-tailed"})
    tail = cli(
        "events",
        "tail",
        "--from-beginning",
        "--request-id",
        "tailed",
        "--max",
        "1",
        "--timeout",
        "60",
        env=service_env,
    )
    assert tail.code == 0, tail.err
    [line] = tail.lines
    shown = json.loads(line)
    check_event(shown["value"])
    assert shown["key"] == "tailed"
    assert shown["value"]["submission_id"] == submission_id
    assert shown["value"]["state"] == "FINISHED"
    assert shown["headers"]["ce_type"] == "io.spark-poller.job.completed.v1"
    assert shown["headers"]["ce_id"] == shown["value"]["event_id"]

    both = cli(
        "events", "tail", "--from-beginning", "--max", "2", "--timeout", "60", env=service_env
    )
    assert sorted(json.loads(line)["key"] for line in both.lines) == ["not-tailed", "tailed"]
    # From the end, nothing new comes: it stops at the timeout and says it found too few.
    none = cli("events", "tail", "--max", "1", "--timeout", "2", env=service_env)
    assert (none.code, none.out) == (1, "")
    assert "timed out after 2s: 0 of 1 event(s)" in none.err
    missing = cli(
        "events",
        "tail",
        "--timeout",
        "5",
        env={**service_env, "POLLER_KAFKA_TOPIC": "no-such-topic"},
    )
    assert (missing.code, missing.err) == (1, "error: topic no-such-topic does not exist\n")


def test_db_upgrade_and_current_on_sqlite(service_env: dict[str, str], tmp_path: Path) -> None:
    db_file = tmp_path / "cli.db"
    env = {**service_env, "POLLER_DATABASE_URL": f"sqlite:///{db_file}"}
    head = migrate.head()
    before = cli("db", "current", env=env)
    assert before.code == 0, before.err
    assert before.lines == ["current: none (no database file yet)", f"head: {head}"]
    assert not db_file.exists()

    upgraded = cli("db", "upgrade", env=env)
    assert upgraded.code == 0, upgraded.err
    assert upgraded.lines == [f"database schema at revision {head} (head)"]
    assert cli("db", "upgrade", env=env).lines == upgraded.lines  # again: nothing to do
    after = cli("db", "current", env=env)
    assert after.lines == [f"current: {head} (head)"]

    url = f"postgresql+psycopg://poller:{DB_PASSWORD}@127.0.0.1:{free_port()}/poller"
    failed = cli("db", "upgrade", env={**service_env, "POLLER_DATABASE_URL": url})
    assert (failed.code, failed.out) == (1, "")
    assert failed.err.startswith("error: database unavailable: OperationalError")
    assert len(failed.err.splitlines()) == 1
    assert DB_PASSWORD not in failed.err
    assert "postgresql" not in failed.err


def test_serve_reads_its_log_level_from_settings(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """POLLER_LOG_LEVEL is a setting like the others: a bad value stops the start (exit 2)."""
    svc = ServiceProcess({**service_env, "POLLER_LOG_LEVEL": "WARNING"}, tmp_path / "quiet.log")
    svc.start()
    wait_for(lambda: svc.get("/readyz").status_code == 200, 30, "ready")
    assert svc.terminate() == 0
    assert [r for r in svc.log_records() if r["level"] in {"DEBUG", "INFO"}] == []
    invalid = cli("serve", env={**service_env, "POLLER_LOG_LEVEL": "LOUD"})
    assert invalid.code == 2
    assert invalid.err.startswith("invalid configuration: POLLER_LOG_LEVEL")
