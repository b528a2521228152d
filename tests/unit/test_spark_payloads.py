"""The Spark REST payloads we build and read, checked without a server."""

from __future__ import annotations

import socket
import ssl
from http.client import RemoteDisconnected

import pytest
import requests
from urllib3 import HTTPConnectionPool
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError

from poller.errors import SparkUnavailable
from poller.schemas import DriverState, JobSpec
from poller.spark import (
    PYTHON_RUNNER,
    _may_have_landed,
    create_request_body,
    master_not_alive,
    parse_status,
)


def test_python_resource_gets_spark_submit_conventions() -> None:
    spec = JobSpec(
        app_resource="file:/jobs/etl.py",
        app_args=["--day", "1"],
        spark_properties={"spark.submit.pyFiles": "file:/jobs/lib.zip"},
    )
    body = create_request_body(spec, "spark://m:7077", "req-1", "4.3.0", tag="t-1")
    assert body["mainClass"] == PYTHON_RUNNER
    assert body["appArgs"] == ["file:/jobs/etl.py", "file:/jobs/lib.zip", "--day", "1"]
    assert body["appResource"] == "file:/jobs/etl.py"
    props = body["sparkProperties"]
    assert props["spark.master"] == "spark://m:7077"
    assert props["spark.submit.deployMode"] == "cluster"
    assert props["spark.app.name"] == "req-1"
    assert props["spark.poller.tag"] == "t-1"  # finds it after a lost answer
    assert "spark.jars" not in props
    assert body["environmentVariables"] == {"SPARK_ENV_LOADED": "1"}


def test_jar_resource_keeps_main_class_and_ships_the_jar() -> None:
    spec = JobSpec(
        app_resource="file:/jobs/etl.jar",
        main_class="com.acme.Etl",
        app_args=["x"],
        spark_properties={"spark.app.name": "nightly"},
        environment_variables={"SPARK_USER": "etl"},
    )
    body = create_request_body(spec, "spark://m:7077", "req-2", "4.3.0")
    assert body["mainClass"] == "com.acme.Etl"
    assert body["appArgs"] == ["x"]
    assert body["sparkProperties"]["spark.jars"] == "file:/jobs/etl.jar"
    assert body["sparkProperties"]["spark.app.name"] == "nightly"
    assert body["environmentVariables"]["SPARK_USER"] == "etl"


def test_status_answers() -> None:
    running = parse_status({"success": True, "driverState": "RUNNING", "submissionId": "d"})
    assert (running.found, running.state, running.raw_state) == (
        True,
        DriverState.RUNNING,
        "RUNNING",
    )
    unknown_id = parse_status({"success": False, "submissionId": "d"})
    assert not unknown_id.found
    assert unknown_id.state is None
    odd = parse_status({"success": True, "driverState": "SOMETHING_NEW"})
    assert (odd.state, odd.raw_state) == (DriverState.UNKNOWN, "SOMETHING_NEW")
    error = parse_status(
        {
            "success": True,
            "driverState": "ERROR",
            "message": "Exception from the cluster:\njava.io.IOException: nope\n"
            "\tat org.apache.Foo.bar(Foo.java:1)\n\tat x.y(z:2)",
        }
    )
    assert error.state == DriverState.ERROR
    assert error.message == "Exception from the cluster:\njava.io.IOException: nope"


@pytest.mark.parametrize(
    ("host_port", "host"),
    [("127.0.0.1:7078", "127.0.0.1"), ("[::1]:7078", "::1"), ("worker-3", "worker-3"), ("", None)],
)
def test_a_status_names_the_worker_and_its_host(host_port: str, host: str | None) -> None:
    status = parse_status(
        {
            "success": True,
            "driverState": "RUNNING",
            "workerId": "worker-20261206-127.0.0.1-7078",
            "workerHostPort": host_port,
        }
    )
    assert (status.worker_id, status.worker_host) == ("worker-20261206-127.0.0.1-7078", host)
    assert parse_status({"success": True, "driverState": "SUBMITTED"}).worker_id is None


def test_terminal_states() -> None:
    assert {s for s in DriverState if s.terminal} == {
        DriverState.FINISHED,
        DriverState.FAILED,
        DriverState.KILLED,
        DriverState.ERROR,
        DriverState.CANCELLED,
        DriverState.LOST,
        DriverState.TIMED_OUT,
        DriverState.SUBMIT_UNKNOWN,
    }


# What a master that is not ALIVE answers, as Spark 4.3 writes it (its frames have no "at").
NOT_ALIVE_STATUS = {
    "action": "SubmissionStatusResponse",
    "message": "Exception from the cluster:\njava.lang.Exception: Current state is not alive: "
    "RECOVERING. Can only request driver status in ALIVE state.\n"
    "\torg.apache.spark.deploy.master.Master$$anonfun$receiveAndReply$1.applyOrElse"
    "(Master.scala:494)\n\torg.apache.spark.rpc.netty.Inbox.safelyCall(Inbox.scala:216)",
    "serverSparkVersion": "4.3.0",
    "submissionId": "driver-20261126105118-0000",
    "success": False,
}
NOT_ALIVE_CREATE = {
    "action": "CreateSubmissionResponse",
    "message": "Current state is not alive: STANDBY. Can only accept driver submissions in ALIVE "
    "state.",
    "serverSparkVersion": "4.3.0",
    "success": False,
}
NOT_ALIVE_KILL = {
    "action": "KillSubmissionResponse",
    "message": "Current state is not alive: COMPLETING_RECOVERY. Can only kill drivers in ALIVE "
    "state.",
    "serverSparkVersion": "4.3.0",
    "submissionId": "driver-20261126105118-0000",
    "success": False,
}


def test_a_master_that_is_not_alive_is_not_an_unknown_driver() -> None:
    assert master_not_alive(NOT_ALIVE_STATUS) == "RECOVERING"
    assert master_not_alive(NOT_ALIVE_CREATE) == "STANDBY"
    assert master_not_alive(NOT_ALIVE_KILL) == "COMPLETING_RECOVERY"
    with pytest.raises(SparkUnavailable, match="RECOVERING, not ALIVE") as raised:
        parse_status(NOT_ALIVE_STATUS)
    assert not raised.value.maybe_applied


def test_answers_of_an_alive_master_are_not_mistaken_for_not_alive() -> None:
    unknown = {"action": "SubmissionStatusResponse", "submissionId": "d", "success": False}
    gone = {"success": False, "message": "Driver d has already finished or does not exist"}
    running = {"success": True, "driverState": "RUNNING"}
    # A driver's own error text could say anything; a successful answer is never a refusal.
    error = {
        "success": True,
        "driverState": "ERROR",
        "message": "Exception from the cluster:\njava.lang.Exception: Current state is not alive",
    }
    for payload in (unknown, gone, running, error):
        assert master_not_alive(payload) is None, payload
    assert not parse_status(unknown).found
    assert parse_status(error).state == DriverState.ERROR


def test_spark4_stack_frames_are_cut_from_messages() -> None:
    status = parse_status(
        {
            "success": True,
            "driverState": "ERROR",
            "message": "Exception from the cluster:\njava.io.IOException: no such file\n"
            "\torg.apache.spark.deploy.worker.DriverRunner.downloadUserJar(DriverRunner.scala:1)",
        }
    )
    assert status.message == "Exception from the cluster:\njava.io.IOException: no such file"


# -- did the call leave? Judged by the errors' types, never their text ---------------------------

POOL = HTTPConnectionPool("spark-master", 6066)  # opens no socket until a request
CONN = HTTPConnection("spark-master", 6066)
URL = "/v1/submissions/create"


def _retries_exhausted(
    reason: Exception, outer: type[requests.RequestException] = requests.ConnectionError
) -> requests.RequestException:
    """The error requests raises once urllib3's single attempt failed for ``reason``."""
    return outer(MaxRetryError(POOL, URL, reason=reason))


NEVER_SENT = {
    "dns": _retries_exhausted(
        NameResolutionError("spark-master", CONN, socket.gaierror(-2, "Name or service not known"))
    ),
    "refused": _retries_exhausted(
        NewConnectionError(CONN, "Failed to establish a new connection: [Errno 111] refused")
    ),
    "connect timeout": _retries_exhausted(
        ConnectTimeoutError(CONN, "Connection timed out"), requests.ConnectTimeout
    ),
    "proxy unreachable": _retries_exhausted(
        Urllib3ProxyError("Unable to connect to proxy", OSError(111, "refused")),
        requests.exceptions.ProxyError,
    ),
    "certificate refused": _retries_exhausted(
        Urllib3SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")),
        requests.exceptions.SSLError,
    ),
    "bad url": requests.exceptions.InvalidURL("Invalid URL"),
}
MAY_HAVE_LANDED = {
    "read timeout": requests.ReadTimeout(ReadTimeoutError(POOL, URL, "Read timed out.")),
    "reset after sending": requests.ConnectionError(
        ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset"))
    ),
    "closed without answer": requests.ConnectionError(
        ProtocolError("Connection aborted.", RemoteDisconnected("closed without response"))
    ),
    "tls failure mid-answer": _retries_exhausted(
        Urllib3SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
        requests.exceptions.SSLError,
    ),
    "broken answer": requests.exceptions.ChunkedEncodingError(
        ProtocolError("Response ended prematurely")
    ),
    # The text is no evidence: only the type of what happened counts.
    "says refused, is not": requests.ConnectionError(
        "NewConnectionError: Connection refused (as a message only)"
    ),
}


@pytest.mark.parametrize("name", sorted(NEVER_SENT))
def test_calls_that_never_left_are_told_apart(name: str) -> None:
    assert not _may_have_landed(NEVER_SENT[name])


@pytest.mark.parametrize("name", sorted(MAY_HAVE_LANDED))
def test_calls_that_may_have_landed_are_never_taken_as_unsent(name: str) -> None:
    assert _may_have_landed(MAY_HAVE_LANDED[name])


def test_control_characters_and_secrets_in_a_status_never_reach_the_store() -> None:
    """PostgreSQL refuses a NUL in text: one in an answer would fail every write of the
    ending. A URL's password in Spark's message is masked like a log's."""
    status = parse_status(
        {
            "success": True,
            "driverState": "ERR\x00OR",
            "workerId": "worker-\x00-1",
            "workerHostPort": "host\x00name:7078",
            "message": "java.io.IOException: 401 for https://bob:hunter2@repo/app.jar\x00\x1b[1m",
        }
    )
    texts = [status.raw_state, status.worker_id, status.worker_host, status.message]
    assert all(text is not None for text in texts), texts
    assert not any(char in text for text in texts for char in "\x00\x1b"), texts  # type: ignore[operator]
    assert status.message is not None
    assert "hunter2" not in status.message
    assert "https://bob:" in status.message
