"""Talks to one Spark standalone master through its REST submission API (v1)."""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from typing import Any

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

from poller.config import ClusterConfig
from poller.errors import SparkRejected, SparkUnavailable
from poller.schemas import DriverState, DriverStatus, JobSpec

logger = logging.getLogger(__name__)

PYTHON_RUNNER = "org.apache.spark.deploy.PythonRunner"
MAX_MESSAGE_CHARS = 2000
JWS_LIFETIME_S = 300


def create_request_body(
    spec: JobSpec, master_url: str, request_id: str, client_version: str
) -> dict[str, Any]:
    """The CreateSubmissionRequest that spark-submit would send for ``spec`` in cluster mode."""
    properties = {
        "spark.app.name": request_id,
        "spark.driver.supervise": "false",
        **spec.spark_properties,
        "spark.master": master_url,
        "spark.submit.deployMode": "cluster",
    }
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


def parse_status(payload: dict[str, Any]) -> DriverStatus:
    """Read a SubmissionStatusResponse; ``success: false`` means Spark does not know the driver."""
    if payload.get("success") is not True or "driverState" not in payload:
        return DriverStatus(found=False, message=_short(payload.get("message")))
    raw = str(payload["driverState"])
    try:
        state = DriverState(raw)
    except ValueError:
        state = DriverState.UNKNOWN
    return DriverStatus(
        found=True, state=state, raw_state=raw, message=_short(payload.get("message"))
    )


def _short(message: object) -> str | None:
    """Spark's message without the Java stack trace it often carries."""
    if not isinstance(message, str) or not message.strip():
        return None
    text = message.split("\n\tat ", 1)[0].strip()
    return text[:MAX_MESSAGE_CHARS]


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


def _may_have_landed(exc: requests.RequestException) -> bool:
    """False only when the request surely never reached Spark (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        text = repr(exc)
        return not ("NewConnectionError" in text or "Connection refused" in text)
    return True


def _retryable(idempotent: bool) -> Any:
    def check(exc: BaseException) -> bool:
        return isinstance(exc, SparkUnavailable) and (idempotent or not exc.maybe_applied)

    return retry_if_exception(check)


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
    """One cluster's REST API; every call has a timeout and retries transient failures briefly."""

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
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def close(self) -> None:
        self._session.close()

    def _headers(self) -> dict[str, str]:
        if self.cluster.jws_secret is None:
            return {}
        return {"Authorization": f"Bearer {jws_token(self.cluster.jws_secret)}"}

    def _call(
        self, method: str, path: str, *, idempotent: bool, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self.backoff.check()
        try:
            for attempt in Retrying(
                retry=_retryable(idempotent),
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential_jitter(initial=0.2, max=2.0),
                reraise=True,
            ):
                with attempt:
                    payload = self._call_once(method, path, body)
        except SparkUnavailable:
            self.backoff.failed()
            raise
        except SparkRejected:
            self.backoff.succeeded()  # it answered
            raise
        self.backoff.succeeded()
        return payload

    def _call_once(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = f"{self.cluster.rest_base}/v1/submissions/{path}"
        try:
            response = self._session.request(
                method, url, json=body, headers=self._headers(), timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise SparkUnavailable(
                f"Spark cluster {self.name!r} unreachable: {type(exc).__name__}",
                maybe_applied=_may_have_landed(exc),
            ) from exc
        if response.status_code >= 500:
            raise SparkUnavailable(
                f"Spark cluster {self.name!r} answered HTTP {response.status_code}",
                maybe_applied=True,
            )
        if response.status_code != 200:
            raise SparkRejected(_rejection_reason(response), response.status_code)
        try:
            payload = response.json()
        except ValueError as exc:
            raise SparkUnavailable(
                f"Spark cluster {self.name!r} answered with non-JSON", maybe_applied=True
            ) from exc
        if not isinstance(payload, dict):
            raise SparkUnavailable(
                f"Spark cluster {self.name!r} answered oddly", maybe_applied=True
            )
        return payload

    def create(self, spec: JobSpec, request_id: str) -> str:
        """Submit ``spec``; returns the submission id. Raises SparkRejected, SparkUnavailable."""
        body = create_request_body(spec, self.cluster.master_url, request_id, self.client_version)
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
