"""How many drivers one process can follow: the service beside APScheduler 3 doing the same work.

Three pollers follow N drivers of a Spark REST stand-in (bench/standin.py) at the same interval, on
the same kind of job store, one after the other:

- spark-poller: the service (``spark-poller serve``), N requests adopted through ``POST /submit``;
- apscheduler-status: APScheduler 3, a SQLAlchemyJobStore, one interval job per driver whose run
  is one status GET: the stock way to poll with this stack;
- apscheduler-noop: the same with a job that does nothing: APScheduler's own bookkeeping.

For each: status requests per second at the master, CPU per poll, CPU (share of one core), peak RSS,
and the lag of runs (p50/p99: the service's start on a worker thread minus the scheduled time, read
from its histogram's buckets; APScheduler's hand-over to its pool minus the scheduled time); for the
service also submit latency.

    python bench/capacity.py [--drivers 1000] [--interval 30] [--measure 90] [--only service]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from poller.devstack import Daemon, KafkaBroker, free_port, wait_for

TICKS = os.sysconf("SC_CLK_TCK")
LAG_METRIC = "spark_poller_scheduler_lag_seconds"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lag_buckets(url: str) -> dict[float, float]:
    """The service's cumulative lag histogram: upper bound -> count."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(LAG_METRIC + "_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(
                line.rsplit(" ", 1)[1]
            )
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of the runs between two scrapes."""
    bounds = sorted(after)
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return bound
    return float("inf")


class Standin:
    def __init__(self, workdir: Path, drivers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon = Daemon(
            "standin",
            [
                sys.executable,
                str(Path(__file__).with_name("standin.py")),
                "--port",
                str(self.port),
                "--drivers",
                str(drivers),
            ],
            workdir / "standin.log",
        )
        wait_for(lambda: requests.get(f"{self.url}/bench/counts", timeout=1).ok, 30, "stand-in")

    def drivers(self) -> list[str]:
        ids: list[str] = requests.get(f"{self.url}/bench/drivers", timeout=30).json()
        return ids

    def status_count(self) -> int:
        return int(requests.get(f"{self.url}/bench/counts", timeout=10).json().get("status", 0))

    def stop(self) -> None:
        self.daemon.stop()


def measure(pid: int, polls: Callable[[], int], seconds: float) -> tuple[float, float, float]:
    """(polls per second, CPU seconds, wall seconds) of process ``pid`` over ``seconds``."""
    polls0, cpu0, t0 = polls(), cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    polls1, cpu1, t1 = polls(), cpu_s(pid), time.monotonic()
    return (polls1 - polls0) / (t1 - t0), cpu1 - cpu0, t1 - t0


def row(name: str, rate: float, cpu: float, wall: float, rss: float, lag: str, extra: str) -> str:
    per_poll_ms = 1000 * cpu / max(1.0, rate * wall)
    return (
        f"| {name} | {rate:.0f} | {per_poll_ms:.2f} ms | {100 * cpu / wall:.0f}% | {rss:.0f} MB "
        f"| {lag} | {extra} |"
    )


def run_service(args: argparse.Namespace, workdir: Path) -> str:
    standin = Standin(workdir, args.drivers)
    kafka = KafkaBroker(workdir / "kafka").start()
    topic = "bench-completions"
    kafka.create_topic(topic)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_PORT=str(port),
        POLLER_DATABASE_URL=f"sqlite:///{workdir / 'poller.db'}",
        POLLER_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        POLLER_KAFKA_TOPIC=topic,
        POLLER_SPARK_REST_URL=standin.url,
        POLLER_POLL_INTERVAL_SECONDS=str(args.interval),
        POLLER_LOG_LEVEL="WARNING",
    )
    service = Daemon(
        "spark-poller", [sys.executable, "-m", "poller", "serve"], workdir / "service.log", env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/readyz", timeout=1).ok, 60, "the service")
        ids = standin.drivers()
        latencies: list[float] = []
        session = threading.local()

        def adopt(sid: str) -> None:
            if not hasattr(session, "s"):
                session.s = requests.Session()
            started = time.perf_counter()
            answer = session.s.post(f"{url}/submit", json={"submission_id": sid}, timeout=60)
            latencies.append(time.perf_counter() - started)
            answer.raise_for_status()

        load_started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            list(pool.map(adopt, ids))
        load_s = time.monotonic() - load_started
        print(f"service: {len(ids)} adopted in {load_s:.0f}s", flush=True)
        time.sleep(args.interval)  # every job has run once: steady state
        before = lag_buckets(url)
        rate, cpu, wall = measure(service.pid, standin.status_count, args.measure)
        after = lag_buckets(url)
        lag = (
            f"{bucket_quantile(before, after, 0.5):g} / {bucket_quantile(before, after, 0.99):g} s"
        )
        submits = (
            f"submit {1000 * statistics.median(latencies):.0f} / "
            f"{1000 * quantile(latencies, 0.99):.0f} ms ({len(ids) / load_s:.0f}/s, "
            f"{args.clients} clients)"
        )
        return row("spark-poller", rate, cpu, wall, rss_mb(service.pid), f"<= {lag}", submits)
    finally:
        service.stop()
        kafka.stop()
        standin.stop()


def run_baseline(args: argparse.Namespace, workdir: Path, job: str) -> str:
    standin = Standin(workdir, args.drivers)
    report = workdir / f"baseline-{job}.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--as-baseline",
            job,
            "--drivers",
            str(args.drivers),
            "--interval",
            str(args.interval),
            "--standin",
            standin.url,
            "--database",
            f"sqlite:///{workdir / f'baseline-{job}.db'}",
            "--report",
            str(report),
        ],
    )
    try:
        wait_for(report.exists, 600, f"the {job} baseline's jobs")  # written once all are added
        time.sleep(args.interval)

        def runs() -> int:
            return len(json.loads(report.read_text())["lags"])

        first = runs()
        rate, cpu, wall = measure(proc.pid, runs, args.measure)
        lags: list[float] = json.loads(report.read_text())["lags"][first:]
        lag = f"{quantile(lags, 0.5):.3f} / {quantile(lags, 0.99):.3f} s"
        return row(f"apscheduler-{job}", rate, cpu, wall, rss_mb(proc.pid), lag, "-")
    finally:
        proc.terminate()
        proc.wait(30)
        standin.stop()


def baseline_process(args: argparse.Namespace) -> None:
    """APScheduler 3 with a SQLAlchemyJobStore: one interval job per driver (runs until killed)."""
    from apscheduler.executors.pool import ThreadPoolExecutor as JobPool
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    global STANDIN  # read by status_job, which the stored jobs reference by name
    STANDIN = args.standin
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=args.database)},
        executors={"default": JobPool(10)},
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
    )
    scheduler.start(paused=True)
    ids = requests.get(f"{args.standin}/bench/drivers", timeout=30).json()
    # This process runs this file as __main__: the stored jobs name their function there.
    func = "__main__:status_job" if args.as_baseline == "status" else "__main__:noop_job"
    for i, sid in enumerate(ids):
        scheduler.add_job(
            func,
            "interval",
            seconds=args.interval,
            args=(sid,),
            id=sid,
            next_run_time=_first_run(i, len(ids), args.interval),
        )
    lags: list[float] = []

    def on_submit(event: Any) -> None:
        lags.append(time.time() - event.scheduled_run_times[-1].timestamp())

    from apscheduler.events import EVENT_JOB_SUBMITTED

    scheduler.add_listener(on_submit, EVENT_JOB_SUBMITTED)
    scheduler.resume()
    while True:  # one lag per run so far, rewritten now and then for the parent to read
        time.sleep(0.5)
        temporary = Path(args.report + ".tmp")
        temporary.write_text(json.dumps({"lags": lags[:]}))
        temporary.replace(args.report)


def _first_run(i: int, n: int, interval: float) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=interval * i / max(1, n))


STANDIN = ""
_local = threading.local()


def status_job(sid: str) -> None:
    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    _local.s.get(f"{STANDIN}/v1/submissions/status/{sid}", timeout=10).json()


def noop_job(_sid: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--measure", type=float, default=90.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--only", choices=["service", "status", "noop"])
    parser.add_argument("--as-baseline", choices=["status", "noop"], help=argparse.SUPPRESS)
    parser.add_argument("--standin", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_baseline:
        baseline_process(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    rows = []
    try:
        if args.only in (None, "service"):
            rows.append(run_service(args, workdir))
        for job in ("status", "noop"):
            if args.only in (None, job):
                rows.append(run_baseline(args, workdir, job))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{args.drivers} drivers, {args.interval:g} s interval, SQLite, "
        f"measured over {args.measure:g} s"
    )
    print(
        "| poller | polls/s | CPU per poll | CPU (one core) | peak RSS | lag p50 / p99 | submit |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
