"""Hostile callers and secrets: API token, Spark JWS auth, allow-list, nothing secret leaks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from poller.devstack import Postgres, SparkStandalone, free_port
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, driver_ids, poll_job_ids

API_TOKEN = "api-SECRET-token-4c1e"
KAFKA_PASSWORD = "kafka-SECRET-pw-77a0"
DB_PASSWORD = "db-SECRET-pw-19bd"
JWS_SECRET = base64.urlsafe_b64encode(b"jws-SECRET-key-" + os.urandom(24)).decode().rstrip("=")
WRONG_JWS_SECRET = base64.urlsafe_b64encode(os.urandom(40)).decode().rstrip("=")
EXTRA_SECRET = "kafka-extra-SECRET-5e21"
START_DEADLINE_S = 120
# What the test jobs set (conftest.job_body): an operator must allow them by name.
JOB_BODY_PROPERTIES = "spark.pyspark.python,spark.driver.extraJavaOptions"


def run_to_exit(env: dict[str, str]) -> tuple[int, str]:
    """Run ``spark-poller serve`` until it exits (within a deadline): its code and whole output."""
    done = subprocess.run(
        [sys.executable, "-m", "poller", "serve"],
        env={**env, "POLLER_PORT": str(free_port())},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=START_DEADLINE_S,
        check=False,
    )
    return done.returncode, done.stdout.decode(errors="replace")


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


@pytest.mark.parametrize(
    "overrides",
    [
        {"POLLER_API_TOKEN": ""},
        {"POLLER_API_TOKEN": "   "},
        {"POLLER_KAFKA_SASL_PASSWORD": ""},
        {"POLLER_KAFKA_EXTRA_CONFIG": '{"ssl.key.password": ""}'},
    ],
)
def test_empty_secrets_refuse_to_start(
    service_env: dict[str, str], overrides: dict[str, str]
) -> None:
    """An empty POLLER_API_TOKEN used to switch authentication off (empty bearer == secret)."""
    [(variable, _value)] = overrides.items()
    code, output = run_to_exit({**service_env, **overrides})
    assert code == 2, output[-2000:]
    assert f"invalid configuration: {variable}" in output, output[-2000:]
    assert "Started server process" not in output


def test_token_guards_docs_and_comes_before_the_body(
    start_service: ServiceFactory, job_body: JobBody
) -> None:
    svc = start_service(POLLER_API_TOKEN=API_TOKEN)
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    strangers: list[dict[str, str]] = [{}, {"Authorization": "Bearer wrong"}]

    def refused(answer: requests.Response) -> bool:
        return (
            answer.status_code == 401
            and answer.json() == {"detail": "missing or wrong bearer token"}
            and answer.headers["WWW-Authenticate"] == "Bearer"
        )

    for headers in strangers:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/nowhere"):
            assert refused(svc.get(path, headers=headers)), path
        # A stranger learns nothing of the schema, the limits or the ids from its mistakes.
        bad_bodies: list[dict[str, Any]] = [
            {"json": {"job": {"colour": "red"}}},
            {"json": ["job"]},
            {"data": b'{"job": ', "headers": {**headers, "content-type": "application/json"}},
            {"json": {"job": job_body(), "labels": {"pad": "x" * (1024 * 1024)}}},
        ]
        for kwargs in bad_bodies:
            answer = svc.post("/submit", **{"headers": headers, **kwargs})
            assert refused(answer), answer.text[:300]
        assert refused(svc.get("/jobs/bad%20id", headers=headers))
        assert refused(svc.delete("/jobs/%2E%2E", headers=headers))
    assert svc.get("/healthz").status_code == 200
    assert svc.get("/readyz").status_code == 200
    # With the token the same calls reach the app.
    assert svc.get("/docs", headers=good).status_code == 200
    assert svc.get("/redoc", headers=good).status_code == 200
    assert svc.get("/nowhere", headers=good).status_code == 404
    document = svc.get("/openapi.json", headers=good).json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    invalid = svc.post("/submit", json={"job": {"colour": "red"}}, headers=good)
    assert invalid.status_code == 422
    assert svc.get("/jobs", headers=good).json()["total"] == 0


def test_allow_list_covers_everything_a_driver_loads(
    start_service: ServiceFactory,
    job_body: JobBody,
    jobs_dir: Path,
    spark: SparkStandalone,
    service_env: dict[str, str],
    events: EventReader,
) -> None:
    svc = start_service(
        POLLER_ALLOWED_APP_RESOURCES=f"file:{jobs_dir}/[a-z]+\\.py",
        POLLER_ALLOWED_SPARK_PROPERTIES=JOB_BODY_PROPERTIES,
    )
    drivers_before = driver_ids(spark)
    evil = "http://127.0.0.1:9/evil"
    job = job_body()
    hostile: list[tuple[str, dict[str, Any]]] = [
        ("app_resource", {"app_resource": "file:/tmp/x.py"}),
        ("app_resource", {"app_resource": f"file:{jobs_dir}/../../tmp/x.py"}),
        ("spark.jars", {"spark.jars": f"{evil}.jar"}),
        ("spark.jars.packages", {"spark.jars.packages": "org.evil:evil:1.0"}),
        ("spark.jars.repositories", {"spark.jars.repositories": evil}),
        ("spark.jars.ivySettings", {"spark.jars.ivySettings": "/tmp/ivysettings.xml"}),
        ("spark.submit.pyFiles", {"spark.submit.pyFiles": f"file:{jobs_dir}/job.py,{evil}.py"}),
        ("spark.files", {"spark.files": f"{evil}.txt"}),
        ("spark.archives", {"spark.archives": f"{evil}.zip#env"}),
        ("spark.executor.extraJavaOptions", {"spark.executor.extraJavaOptions": "-javaagent:x"}),
        ("spark.driver.defaultJavaOptions", {"spark.driver.defaultJavaOptions": "-Dx=1"}),
        ("spark.driver.extraClassPath", {"spark.driver.extraClassPath": "/tmp"}),
        ("spark.executor.extraLibraryPath", {"spark.executor.extraLibraryPath": "/tmp"}),
        ("spark.executorEnv.LD_PRELOAD", {"spark.executorEnv.LD_PRELOAD": "/tmp/x.so"}),
    ]
    cases: list[tuple[str, dict[str, Any]]] = [
        (
            named,
            {**job, **change}
            if named == "app_resource"
            else {**job, "spark_properties": {**job["spark_properties"], **change}},
        )
        for named, change in hostile
    ]
    for variable in (
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "CLASSPATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "SPARK_SUBMIT_OPTS",
        "SPARK_CLASSPATH",
        "SPARK_DIST_CLASSPATH",
    ):
        cases.append((variable, {**job, "environment_variables": {variable: "/tmp/x"}}))
    cases.append(
        (
            "main_class",
            {
                **job,
                "main_class": "org.apache.spark.deploy.SparkSubmit",
                "app_args": ["--class", "Evil", f"{evil}.jar"],
            },
        )
    )
    for named, body in cases:
        answer = svc.post("/submit", json={"request_id": "hostile", "job": body})
        assert answer.status_code == 422, f"{named}: {answer.status_code} {answer.text[:300]}"
        assert named in answer.json()["detail"], answer.text[:300]
    # Refusals change nothing: no record, no poll job, no driver.
    assert svc.get("/jobs").json()["total"] == 0
    assert poll_job_ids(service_env["POLLER_DATABASE_URL"]) == set()
    assert driver_ids(spark) == drivers_before
    # What the allow-list covers still runs, resource lists included.
    allowed = {
        **job,
        "spark_properties": {
            **job["spark_properties"],
            "spark.submit.pyFiles": f"file:{jobs_dir}/job.py",
            "spark.executorEnv.TEAM": "ingest",
        },
        "environment_variables": {"SPARK_USER": "etl"},
    }
    answer = svc.post("/submit", json={"request_id": "allowed", "job": allowed})
    assert answer.status_code == 202, answer.text
    [event] = events.wait_for_keys({"allowed"})["allowed"]
    assert event.value["state"] == "FINISHED", event.value


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


@pytest.mark.parametrize("failure", ["database unreachable", "bad producer setting"])
def test_a_failed_start_is_one_line_without_secrets(
    service_env: dict[str, str], failure: str
) -> None:
    """A start that fails exits non-zero with one readable line; no traceback, no secret."""
    env = {
        **service_env,
        "POLLER_API_TOKEN": API_TOKEN,
        "POLLER_KAFKA_SASL_USERNAME": "poller",
        "POLLER_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        "POLLER_KAFKA_EXTRA_CONFIG": json.dumps({"ssl.key.password": EXTRA_SECRET}),
        # Nothing listens on this port: the database is unreachable.
        "POLLER_DATABASE_URL": (
            f"postgresql+psycopg://poller:{DB_PASSWORD}@127.0.0.1:{free_port()}/poller"
        ),
    }
    if failure == "database unreachable":
        reason = "cannot start: database unavailable"
    else:  # the producer refuses its configuration while the service is built
        env["POLLER_KAFKA_EXTRA_CONFIG"] = json.dumps(
            {"ssl.key.password": EXTRA_SECRET, "no.such.setting": "1"}
        )
        reason = "cannot start: KafkaException"
    code, output = run_to_exit(env)
    assert code != 0, output[-3000:]
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert reason in line, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for secret in (API_TOKEN, KAFKA_PASSWORD, DB_PASSWORD, EXTRA_SECRET):
        assert secret not in output, f"a secret leaked ({secret[:6]}...):\n{output[-3000:]}"
