"""Masters that are not ALIVE, clusters with several masters, calls that never left, bad keys.

Odd answers come from a loopback proxy in front of the real Spark REST server (NotAliveProxy), or
from a real master restarted with recovery; never from a stand-in server.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from poller.devstack import Daemon, SparkStandalone, free_port, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import (
    DelayingProxy,
    EventReader,
    NotAliveProxy,
    ViewProxy,
    driver_ids,
    driver_state,
)

LOST_AFTER = 3
# Well over LOST_AFTER poll runs' worth of not-alive answers (each run tries up to 3 times).
NOT_ALIVE_ANSWERS = 4 * LOST_AFTER


@pytest.fixture
def standby(spark: SparkStandalone) -> Iterator[NotAliveProxy]:
    """The session's master, seen through a proxy that answers as a STANDBY master."""
    proxy = NotAliveProxy(spark.rest_url, state="STANDBY")
    yield proxy
    proxy.close()


@pytest.fixture
def recovering(spark: SparkStandalone) -> Iterator[NotAliveProxy]:
    """The session's master through a proxy that answers as RECOVERING once switched on."""
    proxy = NotAliveProxy(spark.rest_url)
    yield proxy
    proxy.close()


@pytest.fixture
def recoverable_spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkStandalone]:
    """A cluster of this test's own whose master persists its state and recovers it on start."""
    workdir = tmp_path_factory.mktemp("recoverable-spark")
    (workdir / "recovery").mkdir()
    cluster = SparkStandalone(
        workdir,
        cores=2,
        memory="2g",
        extra_conf={
            "spark.deploy.recoveryMode": "FILESYSTEM",
            "spark.deploy.recoveryDirectory": str(workdir / "recovery"),
            # The test holds the worker stopped for a while: the master must not drop it.
            "spark.worker.timeout": "300",
        },
    ).start()
    yield cluster
    cluster.stop()


def _ended(events: EventReader, request_id: str) -> bool:
    return request_id in {event.key for event in events.drain(0.2)}


def test_recovering_master_is_not_a_lost_driver(
    spark: SparkStandalone,
    recovering: NotAliveProxy,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    svc = start_service(
        POLLER_SPARK_REST_URL=recovering.url, POLLER_LOST_AFTER_UNKNOWN_POLLS=str(LOST_AFTER)
    )
    answer = svc.post("/submit", json={"request_id": "recovering", "job": job_body(seconds=25)})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    wait_for(lambda: svc.job("recovering")["state"] == "RUNNING", 60, "the driver to run")

    recovering.state = "RECOVERING"
    wait_for(
        lambda: (
            recovering.not_alive.get("status", 0) >= NOT_ALIVE_ANSWERS
            or _ended(events, "recovering")
        ),
        90,
        f"{NOT_ALIVE_ANSWERS} status calls answered RECOVERING",
    )
    assert not _ended(events, "recovering"), (
        f"an end was published while the master recovered: {events.by_key()['recovering'][0]}"
    )
    record = svc.job("recovering")
    assert (record["phase"], record["state"]) == ("polling", "RUNNING")
    assert driver_state(spark, submission_id) == "RUNNING"

    recovering.state = None
    [event] = events.wait_for_keys({"recovering"}, timeout_s=120)["recovering"]
    assert event.value["state"] == "FINISHED", event.value
    assert "RECOVERING" in svc.logs()


def test_real_master_restart_with_recovery_keeps_the_driver(
    recoverable_spark: SparkStandalone,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    cluster = recoverable_spark
    watch = NotAliveProxy(cluster.rest_url)  # passes everything through; counts what it saw
    try:
        svc = start_service(
            POLLER_SPARK_REST_URL=watch.url,
            POLLER_SPARK_MASTER_URL=cluster.master_url,
            POLLER_LOST_AFTER_UNKNOWN_POLLS=str(LOST_AFTER),
        )
        answer = svc.post("/submit", json={"request_id": "survivor", "job": job_body(seconds=45)})
        assert answer.status_code == 202, answer.text
        wait_for(lambda: svc.job("survivor")["state"] == "RUNNING", 60, "the driver to run")

        # A worker that answers the new master late keeps it RECOVERING for as long as we like.
        assert cluster.worker is not None
        os.kill(cluster.worker.pid, signal.SIGSTOP)
        try:
            _restart_master(cluster)
            wait_for(
                lambda: (
                    watch.not_alive.get("status", 0) >= 2 * LOST_AFTER or _ended(events, "survivor")
                ),
                120,
                f"{2 * LOST_AFTER} status calls answered by the recovering master",
            )
        finally:
            os.kill(cluster.worker.pid, signal.SIGCONT)
        assert not _ended(events, "survivor"), (
            f"an end was published while the master recovered: {events.by_key()['survivor'][0]}"
        )
        assert svc.job("survivor")["phase"] == "polling"

        [event] = events.wait_for_keys({"survivor"}, timeout_s=120)["survivor"]
        # Usually FINISHED. But a worker resumed just as the new master recovers may register
        # twice ("Duplicate registration at master" in its log), and the master then tells it to
        # kill the driver ("Asked to kill driver"): the event must then say KILLED, as Spark does.
        assert event.value["state"] in {"FINISHED", "KILLED"}, event.value
        assert driver_state(cluster, answer.json()["submission_id"]) == event.value["state"]
    finally:
        watch.close()


def _restart_master(cluster: SparkStandalone) -> None:
    """Stop the master and start it again on the same ports and recovery directory."""
    old = cluster.master
    assert old is not None
    args = old.proc.args
    assert isinstance(args, list)
    argv = [str(arg) for arg in args]
    old.stop()
    cluster.master = Daemon("spark-master", argv, old.log_path, cluster._env())


def test_ha_finds_the_alive_master_and_sticks_to_it(
    spark: SparkStandalone,
    standby: NotAliveProxy,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spark_host_port = spark.master_url.removeprefix("spark://")
    svc = start_service(
        POLLER_SPARK_REST_URL=f"{dead},{standby.url},{spark.rest_url}",
        POLLER_SPARK_MASTER_URL=f"spark://127.0.0.1:{free_port()},{spark_host_port}",
    )
    answer = svc.post("/submit", json={"request_id": "ha-1", "job": job_body(seconds=3)})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    assert submission_id in driver_ids(spark)

    [event] = events.wait_for_keys({"ha-1"})["ha-1"]
    assert event.value["state"] == "FINISHED", event.value
    assert event.value["submission_id"] == submission_id
    assert event.value["polls"] >= 3
    # Asked once, for the create; every poll went straight to the master that answered ALIVE.
    assert standby.seen == {"create": 1}, standby.seen


def test_ha_create_that_may_have_landed_is_not_sent_to_another_master(
    spark: SparkStandalone, start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    slow = DelayingProxy(spark.rest_url, "/v1/submissions/create", delay_s=6)
    ui = ViewProxy(spark.ui_url)  # the one master's web UI, behind a second URL as its REST
    try:
        svc = start_service(
            POLLER_SPARK_REST_URL=f"{slow.url},{spark.rest_url}",
            POLLER_SPARK_UI_URL=f"{spark.ui_url},{ui.url}",
            POLLER_SPARK_TIMEOUT_S="2",
        )
        drivers_before = driver_ids(spark)
        answer = svc.post("/submit", json={"request_id": "ha-slow", "job": job_body()})
        assert answer.status_code == 504, answer.text
        [driver] = driver_ids(spark) - drivers_before  # not sent to the other master
        [event] = events.wait_for_keys({"ha-slow"})["ha-slow"]
        # Found by its tag: the request ends as the driver did.
        assert (event.value["state"], event.value["submission_id"]) == ("FINISHED", driver)
        assert len(driver_ids(spark) - drivers_before) == 1, "the job was submitted twice"
    finally:
        slow.close()
        ui.close()


def test_standby_master_refuses_create_with_503_and_nothing_is_left(
    spark: SparkStandalone,
    standby: NotAliveProxy,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    svc = start_service(POLLER_SPARK_REST_URL=standby.url)
    drivers_before = driver_ids(spark)
    answer = svc.post("/submit", json={"request_id": "on-standby", "job": job_body()})
    assert answer.status_code == 503, answer.text
    assert "STANDBY" in answer.json()["detail"]
    adopt = svc.post(
        "/submit",
        json={"request_id": "adopt-on-standby", "submission_id": "driver-20000101000000-9999"},
    )
    assert adopt.status_code == 503, adopt.text

    assert svc.get("/jobs").json()["total"] == 0
    assert driver_ids(spark) == drivers_before
    assert standby.not_alive.get("create", 0) >= 1
    assert events.drain() == []


def test_dns_failure_on_create_is_503_and_leaves_nothing(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_SPARK_REST_URL="http://spark-master.invalid:6066")
    answer = svc.post("/submit", json={"request_id": "no-such-host", "job": job_body()})
    assert answer.status_code == 503, answer.text
    assert "unreachable" in answer.json()["detail"]
    assert svc.get("/jobs").json()["total"] == 0
    assert events.drain() == [], "an event was published for a call that never left"


SHORT_KEY = base64.urlsafe_b64encode(b"short-SECRET-jws").decode().rstrip("=")  # 16 bytes
NOT_BASE64URL = "jws+SECRET/value+with+slashes/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


@pytest.mark.parametrize(
    ("var", "value", "secret"),
    [
        ("POLLER_SPARK_JWS_SECRET", SHORT_KEY, SHORT_KEY),
        ("POLLER_SPARK_JWS_SECRET", NOT_BASE64URL, NOT_BASE64URL),
        ("POLLER_SPARK_JWS_SECRET", "", None),
        (
            "POLLER_CLUSTERS",
            json.dumps(
                {
                    "lab": {
                        "rest_url": "http://127.0.0.1:6066",
                        "master_url": "spark://127.0.0.1:7077",
                        "jws_secret": SHORT_KEY,
                    }
                }
            ),
            SHORT_KEY,
        ),
    ],
    ids=["too-short", "not-base64url", "empty", "cluster"],
)
def test_bad_jws_secret_stops_the_service_at_start(
    service_env: dict[str, str], var: str, value: str, secret: str | None
) -> None:
    env = {**service_env, "POLLER_PORT": str(free_port()), var: value}
    proc = subprocess.Popen(
        [sys.executable, "-m", "poller", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the service started with a bad {var}")
    text = output.decode(errors="replace")
    assert proc.returncode == 2, text
    assert "invalid configuration" in text, text
    assert var in text, text
    if secret is not None:
        assert secret not in text, "the secret is in the output"
