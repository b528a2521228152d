"""Helpers the tests share: the service as a child process, an event reader, direct look-ups."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import requests
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from poller.db import create_db_engine
from poller.devstack import SparkStandalone, free_port, header_text, wait_for
from poller.models import RequestRow
from poller.schemas import EVENT_SCHEMA_VERSION, DriverState, Phase
from poller.shards import JOBS_TABLE
from poller.store import RequestStore

JOB_SCRIPT = """\
import sys, time
# argv: [seconds to sleep, exit code]
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


@dataclass
class ServiceProcess:
    """``spark-poller serve`` as a child process, the way users run it."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr_path(self) -> Path:
        """Where its stderr goes: its log lines are on stdout (``log_path``), alone."""
        return self.log_path.with_name(self.log_path.name + ".stderr")

    def start(self) -> ServiceProcess:
        env = {**self.env, "POLLER_PORT": str(self.port)}
        with self.log_path.open("ab") as log, self.stderr_path.open("ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "poller", "serve"],
                env=env,
                stdout=log,
                stderr=errors,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(self._ready, 60, f"the service on {self.url}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"service exited {self.proc.returncode}:\n{self.logs()[-3000:]}")
        token = self.env.get("POLLER_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(f"{self.url}/healthz", headers=headers, timeout=1).status_code == 200

    def logs(self) -> str:
        """Everything it wrote: its log (stdout), then anything on stderr (normally nothing)."""
        return self.stdout() + self.stderr()

    def stdout(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stderr(self) -> str:
        path = self.stderr_path
        return path.read_text(errors="replace") if path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """Its log lines, each parsed as the JSON object it must be (ValueError if one is not)."""
        records = []
        for number, line in enumerate(self.stdout().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"log line {number} is not JSON: {line[:300]!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"log line {number} is not a JSON object: {line[:300]!r}")
            records.append(record)
        return records

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(f"{self.url}{path}", timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.post(f"{self.url}{path}", timeout=30, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.delete(f"{self.url}{path}", timeout=30, **kwargs)

    def phases(self, request_ids: list[str], most: int = 20) -> str:
        """Where each request is, as the service tells it: for a failed wait's message."""
        shown = []
        for request_id in request_ids[:most]:
            try:
                record = self.job(request_id)
                shown.append(f"{request_id}={record['phase']}/{record['state']}")
            except (requests.RequestException, ValueError):
                shown.append(f"{request_id}=?")
        return ", ".join(shown) + (", ..." if len(request_ids) > most else "")

    def job(self, request_id: str) -> dict[str, Any]:
        response = self.get(f"/jobs/{request_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


class PatientClient:
    """Calls the service, riding out its deaths: a refused connection is retried."""

    def __init__(self, svc: ServiceProcess) -> None:
        self.svc = svc

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer: requests.Response = getattr(self.svc, method)(path, **kwargs)
                return answer
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@dataclass
class Event:
    key: str
    value: dict[str, Any]
    headers: dict[str, str]
    timestamp_ms: int


def _closed(schema: Any) -> Any:
    """``schema`` with no property beyond those declared anywhere: a field the service adds
    without declaring it fails the suite, not a consumer."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in closed and closed.get("type") == "object":
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


EVENT_SCHEMA_FILE = Path(__file__).parents[1] / "poller" / "event.schema.json"
EVENT_VALIDATOR = jsonschema_rs.validator_for(_closed(json.loads(EVENT_SCHEMA_FILE.read_text())))


def check_event(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as the shipped JSON Schema describes it, fields and all, and of this version."""
    problems = [error.message for error in EVENT_VALIDATOR.iter_errors(value)]
    assert not problems, f"event {value} does not match {EVENT_SCHEMA_FILE.name}: {problems}"
    assert value["schema_version"] == EVENT_SCHEMA_VERSION, value
    return value


class EventReader:
    """Reads every completion event on one topic from the beginning; each must match the
    event's JSON Schema."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.events: list[Event] = []
        self.service: ServiceProcess | None = None  # the one whose requests these events are

    def drain(self, timeout_s: float = 0.5) -> list[Event]:
        while True:
            message = self.consumer.poll(timeout_s)
            if message is None:
                return self.events
            if message.error():
                continue
            self.events.append(
                Event(
                    key=header_text(message.key()),
                    value=check_event(json.loads(message.value() or b"{}")),
                    headers={
                        header_text(k): header_text(v) for k, v in list(message.headers() or [])
                    },
                    timestamp_ms=message.timestamp()[1],
                )
            )

    def wait_for_keys(
        self, keys: set[str], timeout_s: float = 120, copies: int = 1
    ) -> dict[str, list[Event]]:
        """Wait until every key has at least ``copies`` events; return all events by key. On
        time-out the message says where each missing request is (from the last service
        started)."""

        def missing() -> list[str]:
            counts = Counter(e.key for e in self.events)
            return sorted(key for key in keys if counts[key] < copies)

        def where() -> str:
            svc = self.service
            if svc is None or not svc.running():
                return f"no event yet for {missing()}"
            return f"no event yet for {svc.phases(missing())}"

        wait_for(
            lambda: self.drain(0.2) is not None and not missing(),
            timeout_s,
            f"events for {len(keys)} request(s)",
            step_s=0,
            describe=where,
        )
        return self.by_key()

    def by_key(self) -> dict[str, list[Event]]:
        grouped: dict[str, list[Event]] = {}
        for event in self.events:
            grouped.setdefault(event.key, []).append(event)
        return grouped

    def close(self) -> None:
        self.consumer.close()


def poll_job_ids(database_url: str) -> set[str]:
    """Ids of the APScheduler jobs stored in the service's database (every shard's table)."""
    engine = sa.create_engine(database_url)
    try:
        tables = [t for t in sa.inspect(engine).get_table_names() if t.startswith(JOBS_TABLE)]
        with engine.connect() as conn:
            return {i for table in tables for i in conn.scalars(sa.text(f"SELECT id FROM {table}"))}
    finally:
        engine.dispose()


def driver_ids(spark: SparkStandalone) -> set[str]:
    """Every driver the master knows, running or completed."""
    state = spark.cluster_state()
    ids: set[str] = set()
    for key in ("activedrivers", "completeddrivers"):
        drivers = state.get(key, [])
        assert isinstance(drivers, list)
        ids.update(str(driver["id"]) for driver in drivers)
    return ids


def driver_state(spark: SparkStandalone, submission_id: str) -> str | None:
    """What Spark itself says about a driver now."""
    payload = requests.get(
        f"{spark.rest_url}/v1/submissions/status/{submission_id}", timeout=5
    ).json()
    state = payload.get("driverState")
    return str(state) if state is not None else None


def spark_tags(database_url: str) -> dict[str, str | None]:
    """The tag each request's create carried, as its record keeps it."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT request_id, spark_tag FROM poller_requests"))
            return {str(rid): tag for rid, tag in rows}
    finally:
        engine.dispose()


def check_drivers_request(
    spark: SparkStandalone,
    request_id: str,
    event: dict[str, Any],
    submitted: str | None,
    tags: dict[str, str | None],
) -> bool:
    """The event's driver was made for its request, never another's (one killed before it was
    launched has no launch command to tell); True when it was found by its tag (the submit's
    answer was lost), else it is the driver the submit answered with."""
    tag = driver_tag(spark, event["submission_id"])
    assert tag in {None, tags[request_id]}, request_id
    if submitted is None:
        assert tag == tags[request_id] is not None, request_id
        return True
    assert event["submission_id"] == submitted, request_id
    return False


def driver_tag(spark: SparkStandalone, submission_id: str) -> str | None:
    """The ``spark.poller.tag`` in the driver's launch command, read from the worker's own file
    (not through the service): whose request the driver was created for."""
    stderr = spark.worker_dir / submission_id / "stderr"
    head = stderr.read_text(errors="replace").partition("=" * 40)[0] if stderr.exists() else ""
    match = re.search(r"-Dspark\.poller\.tag=([0-9a-f-]+)", head)
    return None if match is None else match.group(1)


class LoopbackServer:
    """An HTTP server of a test's own on a free loopback port, in a daemon thread."""

    port: int
    server: http.server.ThreadingHTTPServer

    def serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class ProxiedCall:
    """One call a proxy forwarded: when it arrived (wall clock), its method and path."""

    at: float
    method: str
    path: str

    @property
    def driver(self) -> str:
        """The submission id a status or kill call names ("" for others)."""
        for action in ("/status/", "/kill/"):
            if action in self.path:
                return self.path.rsplit("/", 1)[-1]
        return ""


class DelayingProxy(LoopbackServer):
    """A loopback HTTP proxy to a real server that holds back answers to chosen paths, and
    remembers every call it forwarded (``calls``).

    It opens the window between "Spark did it" and "we heard about it", where a crash or a
    timeout leaves the outcome of a call unknown. With ``delay_s`` 0 it only watches.
    """

    def __init__(self, target: str, slow_path: str, delay_s: float) -> None:
        self.target = target.rstrip("/")
        self.slow_path = slow_path
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.arrived = 0  # calls to the slow path so far
        self.holding = 0  # of which still unanswered
        self.calls: list[ProxiedCall] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                with proxy.lock:
                    proxy.calls.append(ProxiedCall(time.time(), self.command, self.path))
                if proxy.slow_path in self.path:
                    with proxy.lock:
                        proxy.arrived += 1
                        proxy.holding += 1
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length"}
                }
                answer = requests.request(
                    self.command, proxy.target + self.path, data=body, headers=headers, timeout=30
                )
                if proxy.slow_path in self.path:
                    time.sleep(proxy.delay_s)
                    with proxy.lock:
                        proxy.holding -= 1
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers.get("content-type", "text/plain"))
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, *_args: Any) -> None:
                pass

        self.serve(Handler)

    def seen(self, action: str) -> list[ProxiedCall]:
        """The calls of one REST action ("status", "kill", "create") so far."""
        with self.lock:
            return [call for call in self.calls if f"/submissions/{action}" in call.path]


# Spark's own words (Master.scala, Utils.BACKUP_STANDALONE_MASTER_PREFIX) when it is not ALIVE.
NOT_ALIVE_PREFIX = "Current state is not alive"
NOT_ALIVE_REASONS = {
    "create": "Can only accept driver submissions in ALIVE state.",
    "kill": "Can only kill drivers in ALIVE state.",
    "status": "Can only request driver status in ALIVE state.",
}


class NotAliveProxy(LoopbackServer):
    """A loopback HTTP proxy to a real Spark REST server that, while ``state`` is set, answers
    like a master in that recovery state (STANDBY, RECOVERING): HTTP 200, ``success: false`` and
    Spark's not-alive message, in the JSON shape Spark uses for each action.

    A status call is forwarded and the real answer rewritten; create and kill are never
    forwarded while the switch is on, as a standby master never acts on them. ``seen`` counts the
    calls per action (create, status, kill, readyz) and ``not_alive`` the ones answered as not
    alive, by this proxy or by the real master behind it (one that is really recovering).
    """

    def __init__(self, target: str, state: str | None = None) -> None:
        self.target = target.rstrip("/")
        self.state = state
        self.seen: dict[str, int] = {}
        self.not_alive: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                action, _, submission_id = self.path.removeprefix("/v1/submissions/").partition("/")
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length"}
                }
                state = proxy.state
                try:
                    if state is not None and action in NOT_ALIVE_REASONS:
                        content = proxy.not_alive_answer(action, submission_id, state, headers)
                        status, content_type = 200, "application/json;charset=utf-8"
                    else:
                        real = requests.request(
                            self.command,
                            proxy.target + self.path,
                            data=body,
                            headers=headers,
                            timeout=30,
                        )
                        status, content = real.status_code, real.content
                        content_type = real.headers.get("content-type", "text/plain")
                except requests.ConnectionError:
                    self.close_connection = True  # the master is down: so is its proxy
                    return
                proxy.count(action, NOT_ALIVE_PREFIX.encode() in content)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _answer

            def log_message(self, *_args: Any) -> None:
                pass

        self.serve(Handler)

    def count(self, action: str, not_alive: bool) -> None:
        """Count one answered call, and whether it said the master is not alive."""
        with self._lock:
            self.seen[action] = self.seen.get(action, 0) + 1
            if not_alive:
                self.not_alive[action] = self.not_alive.get(action, 0) + 1

    def not_alive_answer(
        self, action: str, submission_id: str, state: str, headers: dict[str, str]
    ) -> bytes:
        """What a master in ``state`` answers to ``action``, from its real answer where safe."""
        text = f"{NOT_ALIVE_PREFIX}: {state}. {NOT_ALIVE_REASONS[action]}"
        if action == "status":
            # StandaloneStatusRequestServlet: found=false plus the master's exception.
            real = requests.get(
                f"{self.target}/v1/submissions/status/{submission_id}", headers=headers, timeout=30
            )
            payload: dict[str, Any] = real.json()
            for key in ("driverState", "workerId", "workerHostPort"):
                payload.pop(key, None)
            trace = (
                "\torg.apache.spark.deploy.master.Master$$anonfun$receiveAndReply$1"
                ".applyOrElse(Master.scala:494)"
            )
            payload.update(
                success=False,
                message=f"Exception from the cluster:\njava.lang.Exception: {text}\n{trace}",
            )
        elif action == "kill":
            payload = {
                "action": "KillSubmissionResponse",
                "message": text,
                "serverSparkVersion": self._server_version(headers),
                "submissionId": submission_id,
                "success": False,
            }
        else:
            payload = {
                "action": "CreateSubmissionResponse",
                "message": text,
                "serverSparkVersion": self._server_version(headers),
                "success": False,
            }
        return json.dumps(payload, indent=2, sort_keys=True).encode()

    def _server_version(self, headers: dict[str, str]) -> str:
        answer = requests.get(
            f"{self.target}/v1/submissions/readyz", headers=headers, timeout=30
        ).json()
        return str(answer.get("serverSparkVersion", ""))


class ViewProxy(LoopbackServer):
    """A loopback proxy to a real master's web UI that counts ``/json/`` requests and, by
    ``mode``, answers like a master that cannot speak for the cluster: "standby" (its view says
    STANDBY and lists every driver as FINISHED), "broken" (HTTP 500), "garbage" (not JSON). With
    ``mode`` None it forwards the real view."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mode: str | None = None
        # When set, every worker's web UI address in the view is this one.
        self.worker_ui: str | None = None
        self.views = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with proxy._lock:
                    proxy.views += 1
                status, content = proxy.answer(self.path)
                self.send_response(status)
                self.send_header("content-type", "application/json;charset=utf-8")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *_args: Any) -> None:
                pass

        self.serve(Handler)

    def answer(self, path: str) -> tuple[int, bytes]:
        mode = self.mode
        if mode == "broken":
            return 500, b"<html>Server Error</html>"
        if mode == "garbage":
            return 200, b"{not json"
        real = requests.get(self.target + path, timeout=30)
        if self.worker_ui is not None and real.status_code == 200:
            view = real.json()
            for worker in view.get("workers", []):
                worker["webuiaddress"] = self.worker_ui
            return 200, json.dumps(view).encode()
        if mode != "standby":
            return real.status_code, real.content
        view = real.json()
        view["status"] = "STANDBY"
        for driver in view.get("activedrivers", []):
            driver["state"] = "FINISHED"
        view["completeddrivers"] = view.get("completeddrivers", []) + view.pop("activedrivers", [])
        view["activedrivers"] = []
        return 200, json.dumps(view).encode()


class SilentServer:
    """A loopback port that takes connections and never answers: a hung web UI."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.socket.close()


def done_rows(
    count: int, labels: dict[str, str], prefix: str, start: datetime | None = None
) -> list[dict[str, object]]:
    """Finished requests, a millisecond apart from ``start`` (a day ago by default)."""
    start = start or datetime.now(UTC) - timedelta(days=1)
    return [
        {
            "request_id": f"{prefix}-{i:05d}",
            "cluster": "default",
            "submission_id": f"driver-20260101000000-{i:05d}",
            "phase": Phase.DONE.value,
            "state": DriverState.FINISHED.value,
            "labels": labels,
            "polls": 1,
            "unknown_polls": 0,
            "submitted_at": start + timedelta(milliseconds=i),
            "completed_at": start + timedelta(milliseconds=i + 1),
        }
        for i in range(count)
    ]


def fill_requests(database_url: str, rows: list[dict[str, object]]) -> None:
    """Write request rows straight into the store (as a long history would have left them)."""
    engine = create_db_engine(database_url)
    RequestStore(engine).create_schema()
    with engine.begin() as conn:
        conn.execute(sa.insert(RequestRow), rows)
    engine.dispose()
