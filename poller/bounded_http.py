"""A GET whose answer is bounded in size and in time, for the Spark web UIs we read (the
master's cluster view, a worker's driver logs): a misbehaving server can neither fill our memory
nor hold a poll thread with a trickle."""

from __future__ import annotations

import time

import requests
import urllib3

from poller.errors import SparkUnavailable

CHUNK_BYTES = 1024 * 1024


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

    ``timeout_s`` bounds the connect and each read; ``total_s`` the whole answer."""
    deadline = time.monotonic() + total_s
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
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise SparkUnavailable(f"{what} is unreachable: {type(exc).__name__}") from exc
    return bytes(body)
