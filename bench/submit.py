"""``POST /submit`` (adopt) while thousands of polls are in flight, beside a bare FastAPI route.

The service starts on a database seeded with ``--in-flight`` requests being polled (every 30 s),
then adopts drivers of the Spark stand-in: open loop at ``--rate`` requests per second for
``--seconds`` (latency measured from each request's scheduled start, so a stall is not hidden by
fewer requests being sent), then closed loop with ``--clients`` callers for throughput.

Baseline: a bare FastAPI app whose ``POST /submit`` inserts one row into a table of the same kind
of database (SQLite, same engine settings: WAL, synchronous=FULL), served the same way (uvicorn,
one process, a sync route on the thread pool): the floor any durable submit endpoint pays.

    python bench/submit.py [--in-flight 10000] [--rate 100] [--seconds 30] [--clients 16]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity import Standin, quantile, service_env
from bench.seed import seed
from poller.db import create_db_engine
from poller.devstack import Daemon, KafkaBroker, free_port, wait_for

HEADER = (
    "| endpoint | in flight | open loop: rate, p50 / p99 / max | closed loop: req/s "
    "| throughput vs bare |\n|---|---|---|---|---|"
)


def open_loop(call: Callable[[int], None], rate: float, seconds: float) -> list[float]:
    """Latencies (s) of ``rate * seconds`` calls started on schedule, from their scheduled time."""
    n = int(rate * seconds)
    start = time.monotonic() + 0.2
    latencies: list[float] = [0.0] * n

    def one(i: int) -> None:
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        call(i)
        latencies[i] = time.monotonic() - due

    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(one, range(n)))
    return latencies


def closed_loop(call: Callable[[int], None], clients: int, seconds: float, first: int) -> float:
    """Calls per second with ``clients`` callers, each calling as soon as its last call ended."""
    done = [0] * clients
    deadline = time.monotonic() + seconds
    counter = iter(range(first, first + 10_000_000))
    lock = threading.Lock()

    def caller(k: int) -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter)
            call(i)
            done[k] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def poster(url: str, body: Callable[[int], dict[str, object]]) -> Callable[[int], None]:
    local = threading.local()

    def call(i: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        answer = local.session.post(url, json=body(i), timeout=60)
        if answer.status_code not in (200, 201, 202):
            raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")

    return call


def measure(
    name: str, call: Callable[[int], None], args: argparse.Namespace, first: int
) -> tuple[str, float]:
    latencies = open_loop(call, args.rate, args.seconds)
    throughput = closed_loop(call, args.clients, args.seconds / 2, first)
    ms = [1000 * x for x in latencies]
    text = (
        f"{args.rate:g}/s, {statistics.median(ms):.1f} / {quantile(ms, 0.99):.1f} / "
        f"{max(ms):.0f} ms"
    )
    return f"| {name} | {args.in_flight:,} | {text} | {throughput:.0f} |", throughput


def run_service(args: argparse.Namespace, workdir: Path) -> tuple[str, float]:
    adopt = int(args.rate * args.seconds) + 400 * int(args.seconds)  # room for the closed loop
    standin = Standin(workdir, args.in_flight + adopt)
    kafka = KafkaBroker(workdir / "kafka").start()
    try:
        kafka.create_topic("bench")
        url = f"sqlite:///{workdir / 'submit.db'}"
        drivers = standin.drivers()
        engine = create_db_engine(url)
        seed(engine, drivers[: args.in_flight], 30.0)
        engine.dispose()
        env = service_env(url, standin, kafka, "bench", 30.0)
        base = f"http://127.0.0.1:{env['POLLER_PORT']}"
        service = Daemon(
            "spark-poller", [sys.executable, "-m", "poller", "serve"], workdir / "svc.log", env
        )
        try:
            wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 120, "the service")
            time.sleep(5)
            spare = drivers[args.in_flight :]
            call = poster(f"{base}/submit", lambda i: {"submission_id": spare[i]})
            return measure("spark-poller `POST /submit` (adopt)", call, args, len(spare) // 2)
        finally:
            service.stop()
    finally:
        kafka.stop()
        standin.stop()


BARE_APP = """
import sys, uuid
from fastapi import FastAPI
from sqlalchemy import Column, MetaData, String, Table, insert
from poller.db import create_db_engine
engine = create_db_engine(sys.argv[1], pool_size=50)
rows = Table("bare", MetaData(), Column("request_id", String(128), primary_key=True),
             Column("submission_id", String(128)))
rows.metadata.create_all(engine)
app = FastAPI()

@app.post("/submit", status_code=202)
def submit(body: dict[str, str]) -> dict[str, str]:
    request_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(insert(rows).values(request_id=request_id,
                                         submission_id=body["submission_id"]))
    return {"request_id": request_id}

import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def run_bare(args: argparse.Namespace, workdir: Path) -> tuple[str, float]:
    port = free_port()
    argv = [sys.executable, "-c", BARE_APP, f"sqlite:///{workdir / 'bare.db'}", str(port)]
    app = Daemon("bare", argv, workdir / "bare.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}/docs", timeout=1).ok, 60, "the bare app")
        call = poster(f"{base}/submit", lambda _i: {"submission_id": f"driver-{uuid.uuid4()}"})
        return measure("bare FastAPI route, one INSERT", call, args, 0)
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    try:
        ours, ours_rate = run_service(args, workdir)
        print(ours, flush=True)
        bare, bare_rate = run_bare(args, workdir)
        print(bare, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nSQLite (WAL, synchronous=FULL); closed loop with {args.clients} clients")
    print(HEADER)
    print(f"{ours} {ours_rate / bare_rate:.2f} |")
    print(f"{bare} 1 |")


if __name__ == "__main__":
    main()
