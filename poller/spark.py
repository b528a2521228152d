"""Talks to one Spark standalone cluster through its masters' REST submission API (v1).

A cluster may list several masters (standalone HA: one ALIVE, the others STANDBY). Like
spark-submit's RestSubmissionClient, the client asks them in turn and sticks to the one that last
answered as ALIVE.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    EmptyPoolError,
    NewConnectionError,
)
from urllib3.exceptions import ProxyError as Urllib3ProxyError

from poller.config import ClusterConfig
from poller.errors import SparkError, SparkRejected, SparkUnavailable
from poller.failure import redact
from poller.metrics import SPARK_CALL_ERRORS, SPARK_CALL_SECONDS
from poller.schemas import (
    RESERVED_SPARK_PREFIX,
    DriverState,
    DriverStatus,
    JobSpec,
)
from poller.text import printable

logger = logging.getLogger(__name__)

PYTHON_RUNNER = "org.apache.spark.deploy.PythonRunner"
MAX_MESSAGE_CHARS = 2000
JWS_LIFETIME_S = 300
RETRY_WAIT_MAX_S = 2.0
MAX_STATE_CHARS = 32
# Bounds on the worker names an answer may bring into records and events.
MAX_WORKER_ID_CHARS = 128
MAX_HOST_CHARS = 255
# How a master that is not ALIVE (STANDBY, RECOVERING, COMPLETING_RECOVERY) starts its refusal of
# create, kill and status calls: Spark's Utils.BACKUP_STANDALONE_MASTER_PREFIX.
NOT_ALIVE_PREFIX = "Current state is not alive"
_NOT_ALIVE_STATE = re.compile(re.escape(NOT_ALIVE_PREFIX) + r": ([A-Z_]+)")

# Errors that surely come before any byte of the request reached a server: no TCP connection
# (refused, unreachable, DNS: NewConnectionError and NameResolutionError are ConnectTimeoutErrors),
# a proxy that could not be reached or would not open the tunnel, a server certificate refused
# during the TLS handshake, no pooled connection, or a request refused while being prepared.
# Anything else (a read timeout, a reset or a TLS error after sending) may have landed.
_NEVER_SENT: tuple[type[BaseException], ...] = (
    requests.ConnectTimeout,
    ConnectTimeoutError,
    NewConnectionError,
    requests.exceptions.ProxyError,
    Urllib3ProxyError,
    ssl.SSLCertVerificationError,
    EmptyPoolError,
    ClosedPoolError,
    requests.exceptions.URLRequired,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidJSONError,
)


TAG_PROPERTY = RESERVED_SPARK_PREFIX + "tag"


def app_name(spec: JobSpec, request_id: str) -> str:
    """The application name the driver's SparkContext registers with: the job's, or ours."""
    return spec.spark_properties.get("spark.app.name", request_id)


def create_request_body(
    spec: JobSpec,
    master_url: str,
    request_id: str,
    client_version: str,
    tag: str | None = None,
) -> dict[str, Any]:
    """The CreateSubmissionRequest that spark-submit would send for ``spec`` in cluster mode,
    carrying ``tag`` (the request's, from its record) as TAG_PROPERTY."""
    properties = {
        "spark.app.name": app_name(spec, request_id),
        "spark.driver.supervise": "false",
        **spec.spark_properties,
        "spark.master": master_url,
        "spark.submit.deployMode": "cluster",
    }
    if tag is not None:
        # Reaches the driver's launch command, which its worker writes at the top of its
        # stderr: how a driver whose create answer was lost is found. A random UUID: nobody
        # can make another driver carry it beforehand, and Spark's redaction of secret-looking
        # values never hides it (a request_id might look like one).
        properties[TAG_PROPERTY] = tag
    if spec.main_class is None:  # a .py resource: Spark's Python runner conventions
        main_class = PYTHON_RUNNER
        py_files = properties.get("spark.submit.pyFiles", "")
        app_args = [spec.app_resource, py_files, *spec.app_args]
    else:
        main_class = spec.main_class
        app_args = list(spec.app_args)
        if not spec.is_python:
            properties.setdefault("spark.jars", spec.app_resource)
    return {
        "action": "CreateSubmissionRequest",
        "clientSparkVersion": client_version,
        "appResource": spec.app_resource,
        "mainClass": main_class,
        "appArgs": app_args,
        "sparkProperties": properties,
        "environmentVariables": {"SPARK_ENV_LOADED": "1", **spec.environment_variables},
    }


def jws_token(secret: SecretStr, lifetime_s: int = JWS_LIFETIME_S) -> str:
    """An HS256 JWS for Spark's JWSFilter, signed with the master's base64url secret key."""
    encoded = secret.get_secret_value()
    key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    now = int(time.time())
    return jwt.encode(
        {"sub": "spark-poller", "iat": now, "exp": now + lifetime_s}, key, algorithm="HS256"
    )


def master_not_alive(payload: Mapping[str, Any]) -> str | None:
    """The recovery state of a master that refused the call because it is not ALIVE, else None.

    Spark answers such calls with HTTP 200 and ``success: false``; the status call wraps the
    message in "Exception from the cluster". This is what spark-submit checks too.
    """
    message = payload.get("message")
    if payload.get("success") is True or not isinstance(message, str):
        return None
    if NOT_ALIVE_PREFIX not in message:
        return None
    match = _NOT_ALIVE_STATE.search(message)
    return match.group(1) if match else "not ALIVE"


def parse_status(payload: dict[str, Any]) -> DriverStatus:
    """Read a SubmissionStatusResponse; ``success: false`` means Spark does not know the driver.

    Raises SparkUnavailable when the master answered that it is not ALIVE: it knows nothing
    about drivers then, so that answer says nothing about this one.
    """
    state = master_not_alive(payload)
    if state is not None:
        raise SparkUnavailable(f"the Spark master is {state}, not ALIVE")
    if payload.get("success") is not True or "driverState" not in payload:
        return DriverStatus(found=False, message=_short(payload.get("message")))
    raw = printable(str(payload["driverState"]), MAX_STATE_CHARS)  # stored as is: bounded
    try:
        state = DriverState(raw)
    except ValueError:
        state = DriverState.UNKNOWN
    worker_id, host_port = payload.get("workerId"), payload.get("workerHostPort")
    return DriverStatus(
        found=True,
        state=state,
        raw_state=raw,
        message=_short(payload.get("message")),
        worker_id=printable(worker_id, MAX_WORKER_ID_CHARS) if isinstance(worker_id, str) else None,
        worker_host=_host(host_port) if isinstance(host_port, str) else None,
    )


def _host(host_port: str) -> str | None:
    """The host of Spark's ``host:port`` (an IPv6 literal in brackets loses them)."""
    host = host_port.rpartition(":")[0] or host_port
    return printable(host.strip("[]"), MAX_HOST_CHARS) or None


def _short(message: object) -> str | None:
    """Spark's message without the Java stack trace it often carries.

    Spark 4 writes each frame as a tab and the frame, without the "at" of a JVM trace.
    """
    if not isinstance(message, str) or not message.strip():
        return None
    text = message.split("\n\t", 1)[0].strip()
    return printable(redact(text), MAX_MESSAGE_CHARS)


def _rejection_reason(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and _short(payload.get("message")):
        return (
            f"Spark refused the request (HTTP {response.status_code}): {_short(payload['message'])}"
        )
    return (
        f"Spark refused the request (HTTP {response.status_code} {response.reason or ''})".strip()
    )


def _wrapped(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every error it wraps, outermost first.

    requests keeps urllib3's error in ``args``, urllib3's MaxRetryError its cause in ``reason``
    and its ProxyError in ``original_error``; ``raise ... from`` sets ``__cause__``. The implicit
    ``__context__`` is not followed: it may be an unrelated error handled earlier.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        inner = [
            *error.args,
            getattr(error, "reason", None),
            getattr(error, "original_error", None),
        ]
        pending.extend(e for e in inner if isinstance(e, BaseException))
        if error.__cause__ is not None:
            pending.append(error.__cause__)


def _may_have_landed(exc: requests.RequestException) -> bool:
    """False only when the request surely never reached Spark; judged by the errors' types."""
    return not any(isinstance(error, _NEVER_SENT) for error in _wrapped(exc))


def _failure_name(exc: requests.RequestException) -> str:
    """The error's type, and the innermost urllib3 error's type when it wraps one."""
    inner = [e for e in _wrapped(exc) if type(e).__module__.startswith("urllib3.")]
    outer = type(exc).__name__
    return f"{outer} ({type(inner[-1]).__name__})" if inner else outer


def _master_label(rest_base: str) -> str:
    """host:port of a master's REST server, for messages: never a URL's user or password."""
    parts = urlsplit(rest_base)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _retryable(idempotent: bool) -> Any:
    def check(exc: BaseException) -> bool:
        return isinstance(exc, SparkUnavailable) and (idempotent or not exc.maybe_applied)

    return retry_if_exception(check)


def environment_settings(
    session: requests.Session, bases: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """What requests would read from the environment for each base URL (proxies, no_proxy,
    ~/.netrc), read once here: requests reads it again at every call, which costs more than
    the call itself. The CA bundle variables set the session's verification."""
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    return {
        base: {
            "proxies": requests.utils.get_environ_proxies(base),
            "auth": requests.utils.get_netrc_auth(base),
        }
        for base in bases
    }


class Backoff:
    """Spares a cluster that stopped answering: after a failed call, calls fail fast for a
    jittered, exponentially growing pause (capped), so thousands of poll jobs do not hammer a
    master that is down or restarting."""

    def __init__(self, name: str, base_s: float = 1.0, cap_s: float = 60.0) -> None:
        self.name = name
        self.base_s = base_s
        self.cap_s = cap_s
        self._failures = 0
        self._until = 0.0
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            remaining = self._until - time.monotonic()
        if remaining > 0:
            raise SparkUnavailable(
                f"Spark cluster {self.name!r} is backing off for {remaining:.1f}s after failures"
            )

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            pause = min(self.cap_s, self.base_s * 2 ** (self._failures - 1))
            self._until = time.monotonic() + pause * random.uniform(0.5, 1.0)

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._until = 0.0


class SparkClient:
    """One cluster's REST API; every call has a timeout and retries transient failures briefly.

    With several masters, a call goes to the one that last answered as ALIVE first, and moves on
    to the next when a master surely did not get it or answered that it is not ALIVE. A create
    that may have landed is never sent to another master: it could make a second driver.
    """

    def __init__(
        self,
        name: str,
        cluster: ClusterConfig,
        timeout_s: float,
        client_version: str,
        attempts: int = 3,
        pool_size: int = 10,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.timeout_s = timeout_s
        self.client_version = client_version
        self.attempts = attempts
        self.backoff = Backoff(name)
        self.masters = cluster.rest_bases
        self._alive = 0  # index of the master that last answered as ALIVE
        self._alive_lock = threading.Lock()
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=len(self.masters), pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._settings = environment_settings(self._session, self.masters)

    def close(self) -> None:
        self._session.close()

    def alive_master(self) -> int:
        """Index of the master that last answered as ALIVE (the first one, until one did)."""
        with self._alive_lock:
            return self._alive

    @property
    def longest_call_s(self) -> float:
        """An upper bound on one call: every attempt at every master, each with its connect and
        read timeouts, and the pauses between attempts (name resolution aside)."""
        return self.attempts * (len(self.masters) * 2 * self.timeout_s + RETRY_WAIT_MAX_S)

    def _headers(self) -> dict[str, str]:
        if self.cluster.jws_secret is None:
            return {}
        return {"Authorization": f"Bearer {jws_token(self.cluster.jws_secret)}"}

    def _call(
        self, method: str, path: str, *, idempotent: bool, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        call = path.partition("/")[0]  # create, status, kill: never the driver id
        try:
            self.backoff.check()  # while backing off, no call goes out: no duration either
        except SparkUnavailable:
            SPARK_CALL_ERRORS.labels(self.name, call, "backing_off").inc()
            raise
        started = time.monotonic()
        try:
            return self._call_with_retries(method, path, idempotent, body)
        except SparkError as exc:
            cause = "rejected" if isinstance(exc, SparkRejected) else "unavailable"
            SPARK_CALL_ERRORS.labels(self.name, call, cause).inc()
            raise
        finally:
            SPARK_CALL_SECONDS.labels(self.name, call).observe(time.monotonic() - started)

    def _call_with_retries(
        self, method: str, path: str, idempotent: bool, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        try:
            for attempt in Retrying(
                retry=_retryable(idempotent),
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential_jitter(initial=0.2, max=RETRY_WAIT_MAX_S),
                reraise=True,
            ):
                with attempt:
                    payload = self._ask_masters(method, path, body, idempotent)
        except SparkUnavailable:
            self.backoff.failed()  # no master was usable
            raise
        except SparkRejected:
            self.backoff.succeeded()  # it answered
            raise
        self.backoff.succeeded()
        return payload

    def _ask_masters(
        self, method: str, path: str, body: dict[str, Any] | None, idempotent: bool
    ) -> dict[str, Any]:
        """The answer of the first master that answers as ALIVE, from the last one that did.

        Raises SparkRejected as soon as a master refuses the call, and SparkUnavailable when no
        master is usable, or at once when a non-idempotent call may have landed.
        """
        with self._alive_lock:
            first = self._alive
        failures: list[str] = []
        maybe_applied = False
        for step in range(len(self.masters)):
            index = (first + step) % len(self.masters)
            try:
                payload = self._call_once(self.masters[index], method, path, body)
            except SparkUnavailable as exc:
                if exc.maybe_applied and not idempotent:
                    raise
                failures.append(exc.message)
                maybe_applied = maybe_applied or exc.maybe_applied
                continue
            state = master_not_alive(payload)
            if state is not None:
                failures.append(self._not_alive(self.masters[index], state))
                continue
            self._remember(index)
            return payload
        if len(failures) == 1:
            raise SparkUnavailable(failures[0], maybe_applied=maybe_applied)
        raise SparkUnavailable(
            f"no ALIVE master in Spark cluster {self.name!r}: {'; '.join(failures)}",
            maybe_applied=maybe_applied,
        )

    def _remember(self, index: int) -> None:
        with self._alive_lock:
            changed, self._alive = self._alive != index, index
        if changed:
            logger.warning(
                "Spark cluster %s: master %s answers as ALIVE; asking it first from now on",
                self.name,
                _master_label(self.masters[index]),
            )

    def _where(self, rest_base: str) -> str:
        if len(self.masters) == 1:
            return f"Spark cluster {self.name!r}"
        return f"Spark master {_master_label(rest_base)} of cluster {self.name!r}"

    def _not_alive(self, rest_base: str, state: str) -> str:
        if len(self.masters) == 1:
            return f"the master of Spark cluster {self.name!r} is {state}, not ALIVE"
        return f"{self._where(rest_base)} is {state}, not ALIVE"

    def _call_once(
        self, rest_base: str, method: str, path: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        url = f"{rest_base}/v1/submissions/{path}"
        where = self._where(rest_base)
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                headers=self._headers(),
                timeout=self.timeout_s,
                **self._settings[rest_base],
            )
        except requests.RequestException as exc:
            raise SparkUnavailable(
                f"{where} unreachable: {_failure_name(exc)}",
                maybe_applied=_may_have_landed(exc),
            ) from exc
        if response.status_code >= 500:
            raise SparkUnavailable(
                f"{where} answered HTTP {response.status_code}", maybe_applied=True
            )
        if response.status_code != 200:
            raise SparkRejected(_rejection_reason(response), response.status_code)
        try:
            payload = response.json()
        except ValueError as exc:
            raise SparkUnavailable(f"{where} answered with non-JSON", maybe_applied=True) from exc
        if not isinstance(payload, dict):
            raise SparkUnavailable(f"{where} answered oddly", maybe_applied=True)
        return payload

    def create(self, spec: JobSpec, request_id: str, tag: str | None = None) -> str:
        """Submit ``spec`` (tagged ``tag``); returns the submission id. Raises SparkRejected,
        SparkUnavailable."""
        body = create_request_body(
            spec, self.cluster.master_url, request_id, self.client_version, tag
        )
        payload = self._call("POST", "create", idempotent=False, body=body)
        submission_id = payload.get("submissionId")
        if payload.get("success") is not True or not isinstance(submission_id, str):
            reason = _short(payload.get("message")) or "no reason given"
            raise SparkRejected(f"Spark refused the submission: {reason}", 400)
        return submission_id

    def status(self, submission_id: str) -> DriverStatus:
        """The driver's state as Spark reports it now. Raises SparkUnavailable/SparkRejected."""
        return parse_status(self._call("GET", f"status/{submission_id}", idempotent=True))

    def kill(self, submission_id: str) -> tuple[bool, str | None]:
        """Ask Spark to kill the driver; returns (accepted, Spark's message)."""
        payload = self._call("POST", f"kill/{submission_id}", idempotent=True)
        return payload.get("success") is True, _short(payload.get("message"))
