"""Hostile callers and secrets: API token, Spark JWS auth, allow-list, nothing secret leaks."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from poller.devstack import Postgres, SparkStandalone
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader

API_TOKEN = "api-SECRET-token-4c1e"
KAFKA_PASSWORD = "kafka-SECRET-pw-77a0"
DB_PASSWORD = "db-SECRET-pw-19bd"
JWS_SECRET = base64.urlsafe_b64encode(b"jws-SECRET-key-" + os.urandom(24)).decode().rstrip("=")
WRONG_JWS_SECRET = base64.urlsafe_b64encode(os.urandom(40)).decode().rstrip("=")


@pytest.fixture(scope="module")
def spark_jws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkStandalone]:
    """A second cluster whose REST server demands a JWS signed with JWS_SECRET."""
    cluster = SparkStandalone(
        tmp_path_factory.mktemp("spark-jws"), cores=2, memory="2g", jws_secret=JWS_SECRET
    ).start()
    yield cluster
    cluster.stop()


def test_api_token_guards_the_api_but_not_health(
    start_service: ServiceFactory, job_body: JobBody
) -> None:
    svc = start_service(POLLER_API_TOKEN=API_TOKEN)
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}):
        answer = svc.post("/submit", json={"job": job_body()}, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert svc.get("/jobs", headers=headers).status_code == 401
        assert svc.delete("/jobs/x", headers=headers).status_code == 401
    assert svc.get("/jobs", headers=good).json()["total"] == 0  # refused calls changed nothing
    assert svc.get("/healthz").status_code == 200
    assert svc.get("/readyz").status_code == 200
    answer = svc.post("/submit", json={"request_id": "authed", "job": job_body()}, headers=good)
    assert answer.status_code == 202, answer.text


def test_health_can_require_the_token(start_service: ServiceFactory) -> None:
    svc = start_service(POLLER_API_TOKEN=API_TOKEN, POLLER_HEALTH_REQUIRES_TOKEN="true")
    assert svc.get("/healthz").status_code == 401
    assert svc.get("/healthz", headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 200


def test_app_resource_allow_list(
    start_service: ServiceFactory, job_body: JobBody, jobs_dir: Path
) -> None:
    svc = start_service(POLLER_ALLOWED_APP_RESOURCES=f"file:{jobs_dir}/[a-z]+\\.py")
    refused = svc.post("/submit", json={"job": {**job_body(), "app_resource": "file:/tmp/x.py"}})
    assert refused.status_code == 422
    assert "allowed list" in refused.json()["detail"]
    assert svc.get("/jobs").json()["total"] == 0
    assert svc.post("/submit", json={"job": job_body()}).status_code == 202


def test_spark_jws_auth_and_no_secret_leaks(
    start_service: ServiceFactory,
    spark_jws: SparkStandalone,
    postgres: Postgres,
    job_body: JobBody,
    events: EventReader,
) -> None:
    clusters = {
        "secure": {
            "rest_url": spark_jws.rest_url,
            "master_url": spark_jws.master_url,
            "jws_secret": JWS_SECRET,
        },
        "wrongkey": {
            "rest_url": spark_jws.rest_url,
            "master_url": spark_jws.master_url,
            "jws_secret": WRONG_JWS_SECRET,
        },
    }
    # PostgreSQL runs with trust auth here, so a password in the URL is accepted and unused.
    db_url = postgres.url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    svc = start_service(
        POLLER_API_TOKEN=API_TOKEN,
        POLLER_CLUSTERS=json.dumps(clusters),
        POLLER_DATABASE_URL=db_url,
        POLLER_KAFKA_SASL_USERNAME="poller",
        POLLER_KAFKA_SASL_PASSWORD=KAFKA_PASSWORD,
        POLLER_LOG_LEVEL="DEBUG",
    )
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    seen: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        answer: requests.Response = getattr(svc, method)(path, **kwargs)
        seen.append(answer.text)
        return answer

    ok = call(
        "post",
        "/submit",
        headers=auth,
        json={"request_id": "jws-ok", "cluster": "secure", "job": job_body()},
    )
    assert ok.status_code == 202, ok.text
    refused = call(
        "post",
        "/submit",
        headers=auth,
        json={"request_id": "jws-bad", "cluster": "wrongkey", "job": job_body()},
    )
    assert refused.status_code == 502, refused.text
    assert "HTTP 403" in refused.json()["detail"]
    [event] = events.wait_for_keys({"jws-ok"})["jws-ok"]
    assert event.value["state"] == "FINISHED"
    seen.append(json.dumps(event.value))
    seen.append(json.dumps(event.headers))

    call("post", "/submit", json={"job": job_body()})  # no token
    call("post", "/submit", headers={"Authorization": f"Bearer {API_TOKEN[:-1]}"}, json={})
    call("get", "/jobs", headers=auth)
    call("get", "/jobs/jws-ok", headers=auth)
    call("get", "/readyz")
    call("get", "/openapi.json")
    call(
        "post",
        "/submit",
        headers=auth,
        data=b"{",
    )
    call("delete", "/jobs/jws-ok", headers=auth)

    svc.terminate()
    everything = "\n".join([*seen, svc.logs()])
    for secret in (API_TOKEN, KAFKA_PASSWORD, DB_PASSWORD, JWS_SECRET, WRONG_JWS_SECRET):
        assert secret not in everything, f"a secret leaked ({secret[:6]}...)"
