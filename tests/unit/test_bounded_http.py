"""A web UI that trickles or floods is cut off by the bounds of the GET, not waited out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from poller.bounded_http import bounded_session, get_bounded
from poller.errors import SparkUnavailable


@pytest.fixture
def server() -> Iterator[tuple[str, list[bytes]]]:
    """A one-answer HTTP server on loopback; the test puts the answer's parts in the list
    (a part of b"" is a pause of 0.3 s)."""
    listener = socket.create_server(("127.0.0.1", 0))
    parts: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                for part in parts:
                    if part:
                        conn.sendall(part)
                    else:
                        time.sleep(0.3)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/", parts
    listener.close()


def get(url: str, max_bytes: int = 1_000_000) -> bytes:
    return get_bounded(
        bounded_session(),
        url,
        what="w",
        headers={},
        timeout_s=1.0,
        max_bytes=max_bytes,
        total_s=1.0,
    )


def test_a_trickle_is_cut_at_the_deadline(server: tuple[str, list[bytes]]) -> None:
    url, parts = server
    parts += [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"] + [b"x", b""] * 50
    started = time.monotonic()
    with pytest.raises(SparkUnavailable, match="too slow"):
        get(url)
    assert time.monotonic() - started < 2.5  # the deadline plus one read's timeout at most


def test_headers_that_trickle_are_cut_at_the_deadline(server: tuple[str, list[bytes]]) -> None:
    """Each byte within the read timeout, the status line and headers never ending."""
    url, parts = server
    parts += [b"HTTP/1.1 200 OK\r\nX-Slow: "] + [b"a", b""] * 50
    started = time.monotonic()
    with pytest.raises(SparkUnavailable):
        get(url)
    assert time.monotonic() - started < 2.5


def test_headers_through_a_proxy_are_cut_at_the_deadline(server: tuple[str, list[bytes]]) -> None:
    """A proxy from the environment (HTTP_PROXY) goes over connections of its own."""
    url, parts = server
    parts += [b"HTTP/1.1 200 OK\r\nX-Slow: "] + [b"a", b""] * 50
    session = bounded_session()
    session.proxies = {"http": url}
    started = time.monotonic()
    with pytest.raises(SparkUnavailable):
        get_bounded(
            session,
            "http://spark-master.invalid:8080/json/",
            what="w",
            headers={},
            timeout_s=1.0,
            max_bytes=100,
            total_s=1.0,
        )
    assert time.monotonic() - started < 2.5


def test_a_kept_connection_is_cut_at_the_deadline_too(server: tuple[str, list[bytes]]) -> None:
    """The second call of a session goes over the first one's connection."""
    url, parts = server
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    parts += [body, b"", b"HTTP/1.1 200 OK\r\nX-Slow: "] + [b"a", b""] * 50
    session = bounded_session()

    def call() -> bytes:
        return get_bounded(
            session, url, what="w", headers={}, timeout_s=1.0, max_bytes=100, total_s=1.0
        )

    assert call() == b"ok"
    started = time.monotonic()
    with pytest.raises(SparkUnavailable):
        call()
    assert time.monotonic() - started < 2.5


def test_an_answer_over_the_size_is_refused(server: tuple[str, list[bytes]]) -> None:
    url, parts = server
    parts += [b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", b"y" * 5000]
    with pytest.raises(SparkUnavailable, match="too large"):
        get(url, max_bytes=1000)


def test_an_answer_within_the_bounds_is_read_whole(server: tuple[str, list[bytes]]) -> None:
    url, parts = server
    parts += [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab", b"", b"cdef"]
    assert get(url) == b"abcdef"


def test_a_kept_connection_the_server_dropped_is_tried_again_on_a_new_one() -> None:
    """A server closes an idle kept connection when it likes (Jetty after 30 s): a GET that
    meets the close is sent again, once, not taken for a server that cannot be reached."""
    listener = socket.create_server(("127.0.0.1", 0))
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def serve() -> None:
        first, _ = listener.accept()
        first.recv(65536)
        first.sendall(answer)
        first.recv(65536)  # the second request, on the kept connection: dropped unanswered
        first.close()
        fresh, _ = listener.accept()
        with fresh:
            fresh.recv(65536)
            fresh.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    session = bounded_session()
    try:
        for _ in range(2):
            body = get_bounded(
                session, url, what="w", headers={}, timeout_s=2.0, max_bytes=100, total_s=2.0
            )
            assert body == b"ok"
    finally:
        listener.close()
