"""A GET whose answer is bounded in size and in time, for the Spark web UIs we read (the
master's cluster view, a worker's driver logs): a misbehaving server can neither fill our memory
nor hold a poll thread with a trickle."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from poller.errors import SparkUnavailable

CHUNK_BYTES = 1024 * 1024
_Answer = TypeVar("_Answer")
# The deadline of the bounded GET under way on this thread, for the connection it goes over.
_call = threading.local()


def _by_deadline(conn: HTTPConnection, respond: Callable[[], _Answer]) -> _Answer:
    """``respond()`` (the status line and headers), its socket shut at the call's deadline: a
    server that sends a header byte within every read timeout is cut off, not waited out."""
    deadline: float | None = getattr(_call, "deadline", None)
    if deadline is None:
        return respond()

    cut_off = threading.Event()
    guard = threading.Lock()
    answered = False

    def cut() -> None:
        with guard:  # never once the caller has its answer: the connection may be reused
            if answered:
                return
            cut_off.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's: an SSLSocket's own shutdown drops its TLS state
                    # under a reader in another thread.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        try:
            answer = respond()
        finally:
            timer.cancel()
            with guard:
                answered = True
    except Exception as exc:
        if cut_off.is_set():  # the cut, however the reader took it (an end, a reset)
            raise TimeoutError("no answer by the deadline") from exc
        raise
    if cut_off.is_set():  # what came before the cut may parse as a whole answer: it is not
        raise TimeoutError("no answer by the deadline")
    return answer


class _OnceIfDropped(Retry):
    """Sends a GET again, once, when the server dropped the connection under it (as a server
    may close a kept connection once idle); never after a timeout or past the deadline."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Self:
        deadline: float | None = getattr(_call, "deadline", None)
        if error is None:
            return super().increment(method, url, response, error, _pool, _stacktrace)
        read_error = isinstance(error, ProtocolError | ReadTimeoutError)
        dropped = isinstance(error, ProtocolError)
        if dropped and (deadline is None or time.monotonic() < deadline):
            return super().increment(method, url, response, error, _pool, _stacktrace)
        if read_error:  # as requests' own no-retry policy gives them up
            raise error
        raise MaxRetryError(_pool, url or "", error) from error


class _HTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        return _by_deadline(self, super().getresponse)


class _HTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        return _by_deadline(self, super().getresponse)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _BoundedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS  # through a proxy, the same deadline
        return manager


def bounded_session() -> requests.Session:
    """A session for get_bounded: its connections answer by the call's deadline, and a GET
    that meets the server closing a kept connection (as it may once idle) is sent once more."""
    session = requests.Session()
    adapter = _BoundedAdapter(max_retries=_OnceIfDropped(total=1, redirect=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def get_bounded(
    session: requests.Session,
    url: str,
    *,
    what: str,
    headers: dict[str, str],
    timeout_s: float,
    max_bytes: int,
    total_s: float,
    redirects: bool = True,
) -> bytes:
    """The body of a 200 answer; raises SparkUnavailable naming ``what`` otherwise.

    ``timeout_s`` bounds the connect and each read; ``total_s`` the whole answer (the headers
    too, over a ``bounded_session``)."""
    deadline = time.monotonic() + total_s
    _call.deadline = deadline
    try:
        with session.get(
            url, headers=headers, timeout=timeout_s, stream=True, allow_redirects=redirects
        ) as response:
            if response.status_code != 200:
                raise SparkUnavailable(f"{what} answered HTTP {response.status_code}")
            body = bytearray()
            while True:
                # What one read of the socket brings (within timeout_s), however little: a
                # trickle meets the deadline between reads, not at the end of a chunk.
                chunk = response.raw.read1(min(CHUNK_BYTES, max_bytes + 1), decode_content=True)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise SparkUnavailable(f"{what} answer is too large")
                if time.monotonic() > deadline:
                    raise SparkUnavailable(f"{what} answer is too slow")
    except (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        # Cut by a read's timeout or the deadline: it says nothing of whether the server can
        # be reached (a worker is left alone only for that).
        raise SparkUnavailable(f"{what} answer is too slow") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise SparkUnavailable(f"{what} is unreachable: {type(exc).__name__}") from exc
    finally:
        _call.deadline = None
    return bytes(body)
