"""Reading a worker's answer to a log request, and where a worker's web UI may be."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

from poller.errors import SparkUnavailable
from poller.worker_logs import WorkerLogs, _base, parse_log

LOGS = Path(__file__).parent / "data" / "spark_logs"


def test_the_range_line_is_read_and_the_log_follows_it() -> None:
    body = (LOGS / "python_value_error.stdout.log_endpoint").read_bytes()
    chunk = parse_log(body, "driver-20261206115154-0000")
    assert (chunk.start, chunk.end, chunk.length) == (0, 353, 353)
    assert chunk.text == (LOGS / "python_value_error.stdout").read_text()


def test_a_middle_range_and_broken_utf8_are_read() -> None:
    body = b"==== Bytes 100-104 of 900 of /w/driver-1/stderr ====\n\xffab\n"
    chunk = parse_log(body, "driver-1")
    assert (chunk.start, chunk.length, chunk.text) == (100, 900, "\ufffdab\n")


@pytest.mark.parametrize(
    "body", [b"Error: invalid log directory /w/driver-9", b"", b"<html>Not Found</html>"]
)
def test_an_answer_without_a_range_is_no_log(body: bytes) -> None:
    with pytest.raises(SparkUnavailable, match="no such log of driver-9"):
        parse_log(body, "driver-9")


@pytest.mark.parametrize(
    ("address", "base"),
    [
        ("http://10.0.0.7:8081", "http://10.0.0.7:8081"),
        ("http://user:secret@10.0.0.7:8081/proxy/x?y=1", "http://10.0.0.7:8081"),
        ("https://worker-3.example", "https://worker-3.example"),
        ("http://[fe80::1]:8081", "http://[fe80::1]:8081"),
    ],
)
def test_a_worker_address_keeps_only_its_scheme_host_and_port(address: str, base: str) -> None:
    assert _base(address) == base


@pytest.mark.parametrize(
    "address", ["file:///etc/passwd", "ftp://w:21", "10.0.0.7:8081", "http://:8081", "http://[x"]
)
def test_a_worker_address_that_is_not_http_is_never_read(address: str) -> None:
    with pytest.raises(SparkUnavailable, match="not an http") as refused:
        _base(address)
    assert "secret" not in refused.value.message


def test_a_worker_cut_off_by_the_budget_is_read_again_next_time() -> None:
    """Only a worker that cannot be reached is left alone for a while: one that is slow to
    answer a read says nothing of the next."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:  # takes every connection, answers none
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=serve, daemon=True).start()
    logs = WorkerLogs("test")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        for _ in range(2):
            with pytest.raises(SparkUnavailable, match="too slow"):
                logs.read(url, "driver-20261206120000-0001", "stderr", 1000, 0.3)
        assert len(accepted) == 2  # one request each: a read that timed out is not sent again
    finally:
        logs.close()
        listener.close()
        for conn in accepted:
            conn.close()


def test_a_worker_that_cannot_be_connected_to_is_left_alone_for_a_while() -> None:
    """A listener whose accept queue is full drops further connects, as a powered-off worker
    behind a firewall does: one connect timeout, then no read until the quiet time is over."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    logs = WorkerLogs("test")
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(SparkUnavailable, match="unreachable"):
            logs.read(url, "driver-20261206120000-0001", "stderr", 1000, 0.5)
        with pytest.raises(SparkUnavailable, match="did not answer 30s ago"):
            logs.read(url, "driver-20261206120000-0001", "stderr", 1000, 0.5)
    finally:
        logs.close()
        listener.close()
        for filler in fillers:
            filler.close()
