"""poller.failure against driver logs captured from a real Spark 4.3 standalone cluster.

The files under data/spark_logs are the drivers' stdout and stderr as the worker kept them (see
data/spark_logs/README.md for how each was made).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from poller.failure import (
    FRAME_MAX_CHARS,
    KILLED_REASON,
    REASON_MAX_CHARS,
    REDACTED,
    SCAN_MAX_CHARS,
    FailureInfo,
    extract,
    from_line_start,
    killed_reason,
    redact,
)
from poller.masking import Masker

LOGS = Path(__file__).parent / "data" / "spark_logs"
USER_APP_EXIT = "org.apache.spark.SparkUserAppException"


def logs(case: str) -> tuple[str | None, str | None]:
    """The case's stdout and stderr (None for a log the worker never wrote)."""
    found = [LOGS / f"{case}.{kind}" for kind in ("stdout", "stderr")]
    stdout, stderr = (path.read_text(encoding="utf-8") if path.exists() else None for path in found)
    return stdout, stderr


def extracted(case: str, tail_bytes: int = 4096) -> FailureInfo:
    stdout, stderr = logs(case)
    return extract(stdout, stderr, tail_bytes=tail_bytes)


@pytest.mark.parametrize(
    ("case", "script"),
    [
        ("python_value_error", "fail_value.py"),  # raised in the driver itself
        ("python_task_rdd", "task_rdd.py"),  # raised in a task, RDD API
        ("python_task_udf", "task_udf.py"),  # raised in a Python UDF, DataFrame API
    ],
)
def test_python_exception_is_read_from_stdout(case: str, script: str) -> None:
    info = extracted(case)

    assert info.reason == "ValueError: bad partition 7"
    assert info.exception_class == "ValueError"
    assert info.frame is not None
    assert info.frame.startswith(f'File "/tmp/flr/jobs/{script}", line ')
    assert info.frame.endswith(", in process_partition")
    assert info.log_source == "stdout"
    assert info.log_tail is not None
    assert info.log_tail.endswith("ValueError: bad partition 7\n")


def test_a_task_failure_is_found_in_stderr_without_stdout() -> None:
    """The scheduler's log lines quote the executor's traceback."""
    _, stderr = logs("python_task_rdd")

    info = extract(None, stderr)

    assert info.reason == "ValueError: bad partition 7"
    assert info.frame is not None
    assert info.frame.endswith("in process_partition")
    assert info.log_source == "stderr"


def test_chained_exception_reports_what_was_raised_last() -> None:
    info = extracted("python_chained")

    assert info.reason == "RuntimeError: x"
    assert info.exception_class == "RuntimeError"
    assert info.frame == 'File "/tmp/flr/jobs/fail_chained.py", line 8, in lookup'
    assert info.log_source == "stdout"


def test_exception_after_a_spark_job_ran() -> None:
    info = extracted("python_session_fail")

    assert info.reason == "RuntimeError: expected 11 rows, got 10"
    assert info.frame == 'File "/tmp/flr/jobs/session_fail.py", line 6, in check'


def test_dotted_python_exception_name() -> None:
    info = extracted("python_udf_without_session")

    assert info.exception_class == "pyspark.errors.exceptions.base.PySparkRuntimeError"
    assert info.reason is not None
    assert info.reason.startswith(
        "pyspark.errors.exceptions.base.PySparkRuntimeError: [SESSION_OR_CONTEXT_NOT_EXISTS]"
    )


def test_py4j_error_reports_the_java_exception_inside_it() -> None:
    """Py4J's own message names only the call; the JVM's exception says why."""
    info = extracted("python_py4j_error")

    assert info.exception_class == "org.apache.spark.SparkIllegalArgumentException"
    assert info.reason is not None
    assert "[INVALID_DRIVER_MEMORY.SYSTEM_MEMORY] Insufficient driver memory" in info.reason
    assert "Please increase" not in info.reason  # one line
    assert info.frame is not None
    assert info.frame.endswith("in get_return_value")
    assert info.log_source == "stdout"


def test_error_record_beats_the_runner_exit_and_info_noise_in_stderr() -> None:
    """Without stdout: the ERROR record's trace, not the NPE an INFO line quotes while stopping."""
    _, stderr = logs("python_py4j_error")
    assert stderr is not None
    assert "java.lang.NullPointerException" in stderr

    info = extract(None, stderr)

    assert info.exception_class == "org.apache.spark.SparkIllegalArgumentException"
    assert info.frame is not None
    assert info.frame.startswith("at org.apache.spark.memory.UnifiedMemoryManager$.getMaxMemory(")
    assert info.log_source == "stderr"


def test_syntax_error_has_no_traceback_header() -> None:
    info = extracted("python_syntax_error")

    assert info.reason == "SyntaxError: invalid syntax"
    assert info.frame == 'File "/tmp/flr/jobs/syntax_error.py", line 1'
    assert info.log_source == "stdout"


def test_jvm_class_not_found() -> None:
    info = extracted("jvm_class_not_found")

    assert info.reason == "java.lang.ClassNotFoundException: com.example.NoSuchJob"
    assert info.exception_class == "java.lang.ClassNotFoundException"
    assert info.frame == "at java.base/java.net.URLClassLoader.findClass(URLClassLoader.java:445)"
    assert info.log_source == "stderr"


def test_jvm_deepest_cause_past_the_wrapper() -> None:
    info = extracted("jvm_caused_by")

    assert info.reason == (
        "java.io.FileNotFoundException: /data/in/sales.csv (No such file or directory)"
    )
    assert info.frame == "at java.base/java.io.FileInputStream.open0(Native Method)"


@pytest.mark.parametrize(("case", "code"), [("python_sys_exit_message", 1), ("python_big_utf8", 3)])
def test_python_exit_without_traceback_falls_back_to_the_exit_code(case: str, code: int) -> None:
    info = extracted(case)

    assert info.reason == f"{USER_APP_EXIT}: User application exited with {code}"
    assert info.exception_class == USER_APP_EXIT
    assert info.log_source == "stderr"


@pytest.mark.parametrize("case", ["python_ok", "python_killed"])
def test_no_exception_gives_no_reason_and_the_stderr_tail(case: str) -> None:
    _, stderr = logs(case)
    assert stderr is not None

    info = extracted(case)

    assert (info.reason, info.exception_class, info.frame) == (None, None, None)
    assert info.log_source == "stderr"
    assert info.log_tail is not None
    assert stderr.endswith(info.log_tail)


def test_killed_driver_logs_name_no_exception() -> None:
    info = extracted("python_killed")

    assert info.reason is None
    assert killed_reason() == KILLED_REASON


@pytest.mark.parametrize(("stdout", "stderr"), [(None, None), ("", ""), ("\n", None)])
def test_empty_logs_say_nothing(stdout: str | None, stderr: str | None) -> None:
    assert extract(stdout, stderr) == FailureInfo(None, None, None, None, None)


def test_log_endpoint_header_is_ignored() -> None:
    served = (LOGS / "python_value_error.stdout.log_endpoint").read_text(encoding="utf-8")
    assert served.startswith("==== Bytes 0-353 of 353 of ")

    info = extract(served, None)

    assert info.reason == "ValueError: bad partition 7"
    assert info.log_tail is not None
    assert not info.log_tail.startswith("====")


def test_exception_without_message() -> None:
    lines = ["Traceback (most recent call last):", '  File "/job.py", line 3, in wait']
    stdout = "\n".join([*lines, "KeyboardInterrupt", ""])

    info = extract(stdout, None)

    assert (info.reason, info.exception_class) == ("KeyboardInterrupt", "KeyboardInterrupt")
    assert info.frame == 'File "/job.py", line 3, in wait'


def test_multi_line_message_keeps_its_first_line() -> None:
    stdout = (
        "Traceback (most recent call last):\n"
        '  File "/job.py", line 9, in load\n'
        "mylib.errors.LoadError: table missing\n"
        "  hint: run the import first\n"
        "second line of the message\n"
    )

    info = extract(stdout, None)

    assert info.reason == "mylib.errors.LoadError: table missing"
    assert info.exception_class == "mylib.errors.LoadError"


def test_truncated_last_traceback_falls_back_to_the_one_before() -> None:
    whole = 'Traceback (most recent call last):\n  File "/a.py", line 1, in f\nOSError: disk full\n'
    cut = 'Traceback (most recent call last):\n  File "/a.py", line 2, in g\n'

    assert extract(whole + cut, None).reason == "OSError: disk full"


def test_quiet_log_lines_quoting_exceptions_are_not_a_reason() -> None:
    stderr = (
        "26/12/06 12:00:00 INFO SparkContext: Unable to report driver heartbeat metrics\n"
        "java.lang.NullPointerException: Cannot invoke a method\n"
        "\tat org.apache.spark.SparkContext.stop(SparkContext.scala:2343)\n"
        "26/12/06 12:00:01 WARN Utils: retrying\n"
        "java.io.IOException: Connection reset\n"
        "\tat java.base/sun.nio.ch.SocketDispatcher.read0(Native Method)\n"
    )

    info = extract(None, stderr)

    assert info.reason is None
    assert info.log_source == "stderr"


def test_reason_and_frame_are_bounded() -> None:
    stdout = (
        "Traceback (most recent call last):\n"
        f'  File "/{"d" * 2000}.py", line 1, in f\n'
        f"ValueError: {'v' * 5000}\n"
    )

    info = extract(stdout, None)

    assert info.reason is not None
    assert info.frame is not None
    assert len(info.reason) == REASON_MAX_CHARS
    assert len(info.frame) == FRAME_MAX_CHARS
    assert info.reason.startswith("ValueError: vvv")


def test_spark_redacts_secret_properties_in_the_launch_command() -> None:
    """As the worker printed it: the tag verbatim, secret-looking keys and values redacted."""
    _, stderr = logs("python_value_error")
    assert stderr is not None
    launch = stderr.splitlines()[0]

    assert launch.startswith('Launch Command: "')
    assert stderr.splitlines()[1] == "=" * 40
    assert '"-Dspark.poller.tag=6f1d3c0e-2b6a-5d8e-9a41-5f0c3b7e8d21"' in launch
    for key in ("spark.poller.password", "spark.poller.apitoken", "spark.poller.other"):
        assert f'"-D{key}={REDACTED}"' in launch
    assert "reset-password-1" not in launch
    assert redact(launch) == launch  # the same rule: nothing more to hide


def test_secrets_are_masked_in_reason_and_tail() -> None:
    stdout = (
        "connecting with db.password=hunter2 user=etl mode=reset-password-1\n"
        "url=https://api.example.com/v1?access_token=abc123&page=2\n"
        "Traceback (most recent call last):\n"
        '  File "/job.py", line 4, in connect\n'
        "PermissionError: login refused for token=abc123 with key s3cr3t-v4lue\n"
    )

    info = extract(stdout, None, mask=Masker(["s3cr3t-v4lue"]))

    assert info.reason == f"PermissionError: login refused for token={REDACTED} with key ***"
    assert info.log_tail is not None
    for secret in ("hunter2", "abc123", "s3cr3t-v4lue", "reset-password-1"):
        assert secret not in info.log_tail
    assert f"db.password={REDACTED} user=etl mode={REDACTED}" in info.log_tail
    assert f"url={REDACTED}&page=2" in info.log_tail  # the value names a token: all of it


def test_tail_stays_bounded_when_redaction_lengthens_it() -> None:
    stderr = "".join(f"line {i} token=x\n" for i in range(100))

    info = extract(None, stderr, tail_bytes=200)

    assert info.log_tail is not None
    assert len(info.log_tail.encode()) <= 200
    assert "token=x" not in info.log_tail


@pytest.mark.parametrize("tail_bytes", [1, 7, 64, 100, 1000, 4096, 40_000, 1_000_000])
def test_tail_is_bounded_utf8_and_starts_at_a_line(tail_bytes: int) -> None:
    stdout, _ = logs("python_big_utf8")  # lines of "line 0xxxx héllo wörld ✓ xxx..."
    assert stdout is not None
    last_line_bytes = len(stdout.splitlines()[-1].encode()) + 1

    tail = extract(None, stdout, tail_bytes=tail_bytes).log_tail  # no reason: the whole tail

    assert tail is not None
    assert len(tail.encode()) <= tail_bytes
    assert "\ufffd" not in tail
    assert stdout.endswith(tail)
    if tail_bytes >= last_line_bytes:
        assert tail.startswith("line ")


def test_zero_tail_bytes_gives_no_tail_but_the_reason() -> None:
    info = extracted("python_value_error", tail_bytes=0)

    assert info.log_tail is None
    assert info.reason == "ValueError: bad partition 7"
    assert info.log_source == "stdout"


def test_one_long_line_is_cut_at_a_character_start() -> None:
    stdout = "✓" * 1000  # 3 bytes each, no newline

    tail = extract(None, stdout, tail_bytes=100).log_tail

    assert tail == "✓" * 33


def test_ten_megabytes_are_read_quickly() -> None:
    noise = "26/12/06 12:00:00 INFO DAGScheduler: Job 1 finished, took 593.647328 ms\n"
    stderr = noise * (10_000_000 // len(noise))
    stdout = (
        "x" * 10_000_000
        + "\nTraceback (most recent call last):\n"
        + '  File "/job.py", line 6, in process_partition\n'
        + "ValueError: bad partition 7\n"
    )
    one_line = "Error" * 2_000_000  # a pathological line for the exception patterns

    started = time.perf_counter()
    info = extract(stdout, stderr)
    nothing = extract(one_line, one_line)
    elapsed_s = time.perf_counter() - started

    assert info.reason == "ValueError: bad partition 7"
    assert nothing.reason is None
    assert elapsed_s < 2.0


def test_only_the_end_of_a_log_is_scanned() -> None:
    old = 'Traceback (most recent call last):\n  File "/a.py", line 1, in f\nOSError: old\n'

    info = extract(old + "y\n" * SCAN_MAX_CHARS, None)

    assert info.reason is None


def test_the_launch_command_never_reaches_the_tail() -> None:
    """It holds every Spark property the job was given: credentials of the job's own."""
    stderr = (
        'Launch Command: "java" "-Dapi.pw=hunter2" "-Dfs.azure.account.key.acct=c2VjcmV0"\n'
        + "=" * 40
        + '\n\nException in thread "main" java.lang.ClassNotFoundException: com.example.X\n'
    )
    found = extract("", stderr)
    assert found.reason == "java.lang.ClassNotFoundException: com.example.X"
    assert found.log_tail is not None
    assert "hunter2" not in found.log_tail
    assert "c2VjcmV0" not in found.log_tail
    assert "Launch Command" not in found.log_tail


def test_passwords_in_urls_are_masked() -> None:
    text = "jdbc:postgresql://etl:pw123@db/x s3a://AKIA:se/cret@bucket/k http://host:8080/p"
    masked = redact(text)
    assert "pw123" not in masked
    assert "se/cret" not in masked
    assert "jdbc:postgresql://etl:" in masked
    assert "http://host:8080/p" in masked


LAUNCH = (
    'Launch Command: "java" "-cp" "/spark/jars/*" "-Dfs.azure.account.key.acct=c2VjcmV0"'
    ' "-Dspark.poller.tag=0f9c1c57" "org.apache.spark.deploy.worker.DriverWrapper"\n'
    + "=" * 40
    + "\n\n"
)


def test_a_relaunched_drivers_launch_commands_never_reach_the_tail() -> None:
    """With spark.driver.supervise the worker appends a launch command for every launch."""
    stderr = (
        LAUNCH
        + 'Exception in thread "main" java.lang.IllegalStateException: boom\n'
        + LAUNCH
        + 'Exception in thread "main" java.lang.IllegalStateException: boom again\n'
    )
    found = extract(None, stderr)
    assert found.reason == "java.lang.IllegalStateException: boom again"
    assert found.log_tail is not None
    assert "c2VjcmV0" not in found.log_tail
    assert "poller.tag" not in found.log_tail
    assert "Launch Command" not in found.log_tail
    assert found.log_tail.count("IllegalStateException") == 2


def test_a_launch_command_cut_by_the_tail_read_never_reaches_the_tail() -> None:
    """A log read from past its start can begin inside the launch command's line."""
    stderr = LAUNCH + 'Exception in thread "main" java.lang.IllegalStateException: boom\n'
    for start in (5, 40, LAUNCH.index("=" * 40)):
        read = from_line_start(stderr[start:], start, stderr=True)
        found = extract(None, read)
        assert found.reason == "java.lang.IllegalStateException: boom"
        assert found.log_tail is not None
        assert "c2VjcmV0" not in found.log_tail, start
        assert "poller.tag" not in found.log_tail, start
    assert from_line_start(stderr, 0) == stderr


def test_control_characters_of_a_log_are_replaced() -> None:
    """A driver may print anything; a NUL or a terminal escape stays out of the event."""
    found = extract(
        '\x1b[31mTraceback (most recent call last):\n  File "a.py", line 1, in <module>\n'
        "ValueError: bad\x00 partition\n",
        None,
    )
    assert found.reason == "ValueError: bad\ufffd partition"
    assert found.log_tail is not None
    assert "\x00" not in found.log_tail
    assert "\x1b" not in found.log_tail


def test_a_launch_command_over_several_lines_cut_by_the_tail_read_never_reaches_the_tail() -> None:
    """An argument with line breaks (a JSON config, say) spreads the command over lines."""
    launch = (
        'Launch Command: "java" "-Dspark.poller.tag=t" "x.Main" "--config" "{\n'
        '  \\"jdbc\\": \\"jdbc:postgresql://db/prod?user=etl&password=hunter2\\",\n'
        '  \\"token\\": \\"ghp_abcdef\\"\n}"\n' + "=" * 40 + "\n\n"
    )
    stderr = launch + 'Exception in thread "main" java.lang.IllegalStateException: boom\n'
    for start in (40, launch.index("jdbc"), launch.index("token")):
        found = extract(None, from_line_start(stderr[start:], start, stderr=True))
        assert found.reason == "java.lang.IllegalStateException: boom"
        assert (
            found.log_tail == 'Exception in thread "main" java.lang.IllegalStateException: boom\n'
        )
    output = "line one\n" + "=" * 40 + "\nline two\n"  # stdout keeps what the job printed
    assert from_line_start("cut\n" + output, 3) == output
