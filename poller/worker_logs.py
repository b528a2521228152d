"""A driver's logs, read from the Spark worker that ran it.

The worker's web UI serves each driver's ``stdout`` and ``stderr`` as plain text at
``/log/?driverId=&logType=&offset=&byteLength=``: a first line ``==== Bytes a-b of n of <path>
====``, then those bytes. Reads are bounded in size and time; a worker that could not be reached
is left alone for a while, so a dead one costs one timeout, not one per ending.

No credentials go to a worker: its address comes from the master's view, where any process that
can register as a worker puts what it likes (a JWS signed for the master would let whoever
collects it submit drivers). Nor do the environment's proxies, .netrc or redirects apply.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

import requests

from poller.bounded_http import bounded_session, get_bounded
from poller.errors import SparkUnavailable
from poller.metrics import SPARK_CALL_ERRORS, SPARK_CALL_SECONDS

LogType = Literal["stdout", "stderr"]
# Room for the range line (and its path) over the bytes asked for.
HEADER_ALLOWANCE = 4096
# After a worker failed to answer, it is not asked again for this long.
QUIET_AFTER_FAILURE_S = 30.0
MAX_QUIET_WORKERS = 10_000
_RANGE = re.compile(rb"==== Bytes (\d+)-(\d+) of (\d+) of [^\n]* ====\n?")


class NoSuchLog(SparkUnavailable):
    """The worker answered, and has no such log (a driver it never launched, or forgot)."""


@dataclass(frozen=True)
class LogChunk:
    text: str
    start: int  # offset of text's first byte in the log
    end: int  # offset just past its last byte
    length: int  # the whole log's length, as the worker saw it


class WorkerLogs:
    """Reads drivers' logs from the workers of one cluster."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._session = bounded_session()
        self._session.trust_env = False
        self._lock = threading.Lock()
        self._quiet_until: dict[str, float] = {}

    def close(self) -> None:
        self._session.close()

    def read(
        self,
        ui_url: str,
        driver_id: str,
        log_type: LogType,
        max_bytes: int,
        timeout_s: float,
        offset: int | None = None,
    ) -> LogChunk:
        """``max_bytes`` of the log from ``offset``, or its last ``max_bytes`` (None).

        Raises SparkUnavailable when the worker cannot be read (naming why, never a secret)."""
        base = _base(ui_url)
        with self._lock:
            quiet = self._quiet_until.get(base, 0.0) - time.monotonic()
        if quiet > 0:
            raise SparkUnavailable(f"worker {base} did not answer {QUIET_AFTER_FAILURE_S:g}s ago")
        query = {"driverId": driver_id, "logType": log_type, "byteLength": str(max_bytes)}
        if offset is not None:
            query["offset"] = str(offset)
        started = time.monotonic()
        try:
            body = get_bounded(
                self._session,
                f"{base}/log/?{urlencode(query)}",
                what=f"worker {base}",
                headers={},
                timeout_s=timeout_s,
                max_bytes=max_bytes + HEADER_ALLOWANCE,
                total_s=timeout_s,
                redirects=False,
            )
        except SparkUnavailable as exc:
            SPARK_CALL_ERRORS.labels(self.name, "log", "unavailable").inc()
            # Only a worker that cannot be reached is left alone: a read cut short by the
            # caller's budget says nothing about the worker.
            if isinstance(exc.__cause__, requests.ConnectionError):
                with self._lock:
                    if len(self._quiet_until) >= MAX_QUIET_WORKERS:
                        self._quiet_until.clear()
                    self._quiet_until[base] = time.monotonic() + QUIET_AFTER_FAILURE_S
            raise
        finally:
            SPARK_CALL_SECONDS.labels(self.name, "log").observe(time.monotonic() - started)
        with self._lock:
            self._quiet_until.pop(base, None)
        return parse_log(body, driver_id)


def parse_log(body: bytes, driver_id: str) -> LogChunk:
    """Read the worker's answer: its range line, then the bytes of the log."""
    match = _RANGE.match(body)
    if match is None:
        # The worker's answer to an unknown driver or log is a line of its own ("Error: ...").
        first = body.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
        raise NoSuchLog(f"the worker has no such log of {driver_id}: {first!r}")
    start, end, length = (int(group) for group in match.groups())
    text = body[match.end() :].decode("utf-8", "replace")
    return LogChunk(text, start, end, length)


def _base(ui_url: str) -> str:
    """The worker UI's scheme://host:port: anything else in the address the master passed on
    (a path, credentials) is dropped, and only http(s) is read."""
    try:
        parts = urlsplit(ui_url)
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        scheme, host, port = "", None, None
    if scheme not in ("http", "https") or not host:
        raise SparkUnavailable("the worker's web UI address is not an http(s) URL")
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port is None else f":{port}")
