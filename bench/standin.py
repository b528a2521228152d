"""A Spark standalone master stand-in for capacity benchmarks: answers like Spark's REST server.

Thousands of real drivers do not fit on this machine, but the service's side of a poll does not
depend on what runs behind the master. This stand-in answers the REST submission API's create,
status, kill and readyz in Spark 4.3's shapes (../shared/reference/spark-rest.md) and the master
web UI's ``/json/``, for drivers it only pretends to run, and counts every request by kind so a
benchmark can report the load on the master. One asyncio process, HTTP/1.1 keep-alive: cheap
enough that the service, not the stand-in, is what a benchmark measures.

    python bench/standin.py --port 16066 [--drivers 10000] [--runs-s 0]

``--drivers`` pre-creates that many RUNNING drivers (ids printed by ``GET /bench/drivers``);
``--runs-s`` > 0 makes each driver FINISH that long after it started. ``POST /bench/end``
ends every driver now (FINISHED; ``?n=K``: K more of them), ``GET /bench/counts`` gives the
request counts and ``GET /bench/timeline`` the requests of each kind per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

VERSION = "4.3.0"
TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED", "ERROR"})


class RawJson(bytes):
    """An answer already encoded."""


@dataclass
class Driver:
    id: str
    started: float
    state: str = "RUNNING"


@dataclass
class Master:
    runs_s: float
    drivers: dict[str, Driver] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # Requests per kind per second of the epoch, for rates over 1 s windows.
    timeline: dict[str, Counter[int]] = field(default_factory=dict)
    _seq: int = 0
    version: int = 0  # bumped when a driver is added or changes state
    _view: tuple[tuple[int, int], RawJson] | None = None

    def new_driver(self) -> Driver:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        driver = Driver(f"driver-{stamp}-{self._seq:04d}", time.monotonic())
        self._seq += 1
        self.version += 1
        self.drivers[driver.id] = driver
        return driver

    def state_of(self, driver: Driver) -> str:
        if (
            driver.state == "RUNNING"
            and self.runs_s > 0
            and time.monotonic() - driver.started >= self.runs_s
        ):
            driver.state = "FINISHED"
        return driver.state

    def count(self, kind: str) -> None:
        self.counts[kind] += 1
        self.timeline.setdefault(kind, Counter())[int(time.time())] += 1

    def answer(self, method: str, path: str) -> tuple[int, object]:
        if path.startswith("/v1/submissions/status/"):
            self.count("status")
            sid = path.rsplit("/", 1)[1]
            driver = self.drivers.get(sid)
            if driver is None:
                return 200, {
                    "action": "SubmissionStatusResponse",
                    "serverSparkVersion": VERSION,
                    "submissionId": sid,
                    "success": False,
                }
            body: dict[str, object] = {
                "action": "SubmissionStatusResponse",
                "driverState": self.state_of(driver),
                "serverSparkVersion": VERSION,
                "submissionId": sid,
                "success": True,
                "workerHostPort": "127.0.0.1:7078",
                "workerId": "worker-20261126000000-127.0.0.1-7078",
            }
            return 200, body
        if path == "/v1/submissions/create" and method == "POST":
            self.count("create")
            driver = self.new_driver()
            return 200, {
                "action": "CreateSubmissionResponse",
                "message": f"Driver successfully submitted as {driver.id}",
                "serverSparkVersion": VERSION,
                "submissionId": driver.id,
                "success": True,
            }
        if path.startswith("/v1/submissions/kill/") and method == "POST":
            self.count("kill")
            driver = self.drivers.get(path.rsplit("/", 1)[1])
            if driver is None or self.state_of(driver) in TERMINAL:
                return 200, {"action": "KillSubmissionResponse", "success": False}
            driver.state = "KILLED"
            self.version += 1
            return 200, {"action": "KillSubmissionResponse", "success": True}
        if path == "/v1/submissions/readyz":
            self.count("readyz")
            return 200, {"action": "ReadyzResponse", "serverSparkVersion": VERSION}
        if path in ("/json", "/json/"):
            self.count("json")
            return 200, self.cached_view()
        if path == "/bench/counts":
            return 200, dict(self.counts)
        if path == "/bench/timeline":
            return 200, {kind: dict(seconds) for kind, seconds in self.timeline.items()}
        if path == "/bench/drivers":
            return 200, sorted(self.drivers)
        if path.startswith("/bench/end") and method == "POST":
            limit = int(path.partition("?n=")[2] or len(self.drivers))
            ended = 0
            for driver in self.drivers.values():
                if ended < limit and driver.state == "RUNNING":
                    driver.state = "FINISHED"
                    ended += 1
            self.version += 1
            return 200, {"ended": ended, "at": time.time()}
        return 404, {"message": "no such path"}

    def cached_view(self) -> RawJson:
        """The view, rebuilt only when a driver was added or changed (at most once a second
        while drivers end on their own): building it for 50,000 drivers takes a while, and a
        real master serves it from other threads than its REST calls'."""
        key = (self.version, int(time.monotonic()) if self.runs_s > 0 else 0)
        if self._view is None or self._view[0] != key:
            self._view = (key, RawJson(json.dumps(self.cluster_json()).encode()))
        return self._view[1]

    def cluster_json(self) -> dict[str, object]:
        """The master web UI's /json/: every driver, active and completed."""
        active: list[dict[str, object]] = []
        completed: list[dict[str, object]] = []
        for driver in self.drivers.values():
            state = self.state_of(driver)
            entry = {
                "id": driver.id,
                "starttime": "0",
                "state": state,
                "cores": 1,
                "memory": 256,
                "submitdate": "Thu Nov 26 00:00:00 UTC 2026",
                "worker": "worker-20261126000000-127.0.0.1-7078",
                "mainclass": "org.apache.spark.deploy.PythonRunner",
            }
            (completed if state in TERMINAL else active).append(entry)
        return {
            "url": "spark://127.0.0.1:7077",
            "status": "ALIVE",
            "aliveworkers": 1,
            "activedrivers": active,
            "completeddrivers": completed,
        }


async def serve_connection(
    master: Master, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            bare = path.split("?", 1)[0]
            status, body = master.answer(method, path if bare == "/bench/end" else bare)
            payload = body if isinstance(body, RawJson) else json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} OK\r\ncontent-type: application/json;charset=utf-8\r\n"
                f"content-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int, drivers: int, runs_s: float) -> None:
    master = Master(runs_s)
    for _ in range(drivers):
        master.new_driver()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(master, r, w), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--drivers", type=int, default=0)
    parser.add_argument("--runs-s", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.drivers, args.runs_s))
