"""The Spark REST payloads we build and read, checked without a server."""

from __future__ import annotations

from poller.schemas import DriverState, JobSpec
from poller.spark import PYTHON_RUNNER, create_request_body, parse_status


def test_python_resource_gets_spark_submit_conventions() -> None:
    spec = JobSpec(
        app_resource="file:/jobs/etl.py",
        app_args=["--day", "1"],
        spark_properties={"spark.submit.pyFiles": "file:/jobs/lib.zip"},
    )
    body = create_request_body(spec, "spark://m:7077", "req-1", "4.3.0")
    assert body["mainClass"] == PYTHON_RUNNER
    assert body["appArgs"] == ["file:/jobs/etl.py", "file:/jobs/lib.zip", "--day", "1"]
    assert body["appResource"] == "file:/jobs/etl.py"
    props = body["sparkProperties"]
    assert props["spark.master"] == "spark://m:7077"
    assert props["spark.submit.deployMode"] == "cluster"
    assert props["spark.app.name"] == "req-1"
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
