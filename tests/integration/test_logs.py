"""The service's log, as a log shipper and an operator see it: JSON lines on stdout naming the
request each line is about, the human format on request, and no secret in any line."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime

from poller.devstack import Postgres, free_port
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader

API_TOKEN = "api-SECRET-token-0d5c"
KAFKA_PASSWORD = "kafka-SECRET-pw-3b7e"
DB_PASSWORD = "db-SECRET-pw-8f21"
JWS_SECRET = base64.urlsafe_b64encode(b"jws-SECRET-key-" + os.urandom(24)).decode().rstrip("=")
SECRETS = (API_TOKEN, KAFKA_PASSWORD, DB_PASSWORD, JWS_SECRET)
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_every_line_is_json_and_a_jobs_lines_name_it(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_LOG_LEVEL="DEBUG")
    answer = svc.post("/submit", json={"request_id": "logged", "job": job_body()})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    events.wait_for_keys({"logged"})
    assert svc.terminate() == 0

    records = svc.log_records()  # raises on the first line that is not a JSON object
    assert records
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        when = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - when).total_seconds()) < 600, record
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, record
    assert svc.stderr() == ""

    ours = [r for r in records if r.get("request_id") == "logged"]
    by_message = {r["message"]: r for r in ours}
    tracking = by_message[f"tracking logged: driver {submission_id} on default (submitted)"]
    ended = by_message[f"{submission_id} of logged ended FINISHED"]
    published = by_message["published the event of logged"]
    for line in (tracking, ended, published):
        assert (line["submission_id"], line["cluster"]) == (submission_id, "default"), line
    # Poll runs: APScheduler's own lines (in its threads) name the job, which is the request.
    runs = [r for r in ours if r["logger"].startswith("apscheduler.")]
    assert any(r["message"].startswith('Running job "poll logged') for r in runs), ours
    # uvicorn's lines go the same way.
    started = [r for r in records if r["logger"] == "uvicorn.error"]
    assert any(r["message"].startswith("Uvicorn running on http://") for r in started), started


def test_text_format_for_humans(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_LOG_FORMAT="TEXT")
    answer = svc.post("/submit", json={"request_id": "texted", "job": job_body()})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    events.wait_for_keys({"texted"})
    assert svc.terminate() == 0
    lines = svc.stdout().splitlines()
    assert lines
    assert all(TEXT_LINE.match(line) for line in lines if not line.startswith(("\t", " "))), lines
    assert any(" INFO uvicorn.error: Uvicorn running on http://" in line for line in lines)
    ended = [line for line in lines if f"{submission_id} of texted ended FINISHED" in line]
    assert len(ended) == 1, lines
    assert ended[0].endswith(
        f"[request_id=texted submission_id={submission_id} cluster=default]"
    ), ended


def test_no_secret_in_any_line(
    start_service: ServiceFactory,
    service_env: dict[str, str],
    postgres: Postgres,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """Secrets reach the log through callers (a token in a query string, a password as a
    request id) and through foreign errors that quote connection settings: all are masked."""
    # PostgreSQL runs with trust auth here, so a password in the URL is accepted and unused.
    db_url = postgres.url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    secrets_env = {
        "POLLER_API_TOKEN": API_TOKEN,
        "POLLER_KAFKA_SASL_USERNAME": "poller",
        "POLLER_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        "POLLER_SPARK_JWS_SECRET": JWS_SECRET,
        "POLLER_DATABASE_URL": db_url,
        "POLLER_LOG_LEVEL": "DEBUG",
        "POLLER_ACCESS_LOG": "true",
    }
    svc = start_service(**secrets_env)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    answer = svc.post("/submit", json={"request_id": "masked", "job": job_body()}, headers=auth)
    assert answer.status_code == 202, answer.text
    assert svc.get("/jobs", params={"token": API_TOKEN}, headers=auth).status_code == 200
    assert svc.get(f"/jobs/{KAFKA_PASSWORD}", headers=auth).status_code == 404
    assert svc.get(f"/jobs/{JWS_SECRET}").status_code == 401
    # A request whose id is a secret: every line about it is masked, ours and APScheduler's.
    leaky = svc.post("/submit", json={"request_id": DB_PASSWORD, "job": job_body()}, headers=auth)
    assert leaky.status_code == 202, leaky.text
    events.wait_for_keys({"masked", DB_PASSWORD})
    assert svc.terminate() == 0
    records = svc.log_records()
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r.get("path") == "/jobs?token=***" for r in access), access
    assert any(
        r["message"]
        == "tracking ***: driver " + leaky.json()["submission_id"] + " on default (submitted)"
        for r in records
    )

    # A start whose database refuses the connection, quoting its settings (the database name,
    # here the password) in the error: the one line that says why is masked too.
    refused_url = db_url.rsplit("/", 1)[0] + f"/{DB_PASSWORD}"
    failed = subprocess.run(
        [sys.executable, "-m", "poller", "serve"],
        env={
            **service_env,
            **secrets_env,
            "POLLER_DATABASE_URL": refused_url,
            "POLLER_PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode != 0
    [reason] = [line for line in failed.stdout.splitlines() if "cannot start" in line]
    assert 'database "***" does not exist' in json.loads(reason)["message"], reason

    everything = "\n".join([svc.logs(), failed.stdout, failed.stderr])
    for secret in SECRETS:
        assert secret not in everything, f"a secret leaked ({secret[:6]}...)"
