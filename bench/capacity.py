"""How many drivers one process can follow: the service beside APScheduler 3 doing the same work.

Each poller follows N drivers of a Spark REST stand-in (bench/standin.py) at the same interval,
one after the other, each from a database seeded with N requests in flight (bench/seed.py):

- spark-poller (view): the service as shipped; polls read the master's cluster view (view-pg:
  the same on PostgreSQL);
- spark-poller (rest): the service asking each driver's REST status at each poll;
- apscheduler-status: APScheduler 3, a SQLAlchemyJobStore, one interval job per driver whose run
  is one status GET: the stock way to poll with this stack;
- apscheduler-noop: the same with a job that does nothing: APScheduler's own bookkeeping.

After one interval of warm-up, over ``--measure`` seconds: polls per second, CPU per poll and
CPU (share of one core) from /proc, peak RSS (VmHWM), the lag of runs (p50/p99: the service's
start on a worker thread minus the scheduled time, from its histogram's buckets; APScheduler's
hand-over to its pool minus the scheduled time), requests the master got per minute, and how many
drivers were never polled (starved).

    python bench/capacity.py [--drivers 10000] [--interval 30] [--measure 30]
        [--only view,view-pg,rest,status,noop]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import baseline_jobs
from bench.seed import seed, seed_jobs
from poller.db import create_db_engine
from poller.devstack import Daemon, KafkaBroker, Postgres, free_port, wait_for

TICKS = os.sysconf("SC_CLK_TCK")
LAG_METRIC = "spark_poller_scheduler_lag_seconds"
VARIANTS = ("view", "view-pg", "rest", "status", "noop")


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


def scrape(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=30).text


def metric_sum(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def histogram(text: str, name: str = LAG_METRIC) -> dict[float, float]:
    """A histogram of the service's /metrics text: upper bound -> cumulative count."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(
                line.rsplit(" ", 1)[1]
            )
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of the runs between two scrapes."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return bound
    return float("inf")


class Standin:
    """The Spark stand-in as a child process."""

    def __init__(self, workdir: Path, drivers: int, runs_s: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(Path(__file__).with_name("standin.py"))]
        argv += ["--port", str(self.port), "--drivers", str(drivers), "--runs-s", str(runs_s)]
        self.daemon = Daemon("standin", argv, workdir / "standin.log")
        wait_for(lambda: requests.get(f"{self.url}/bench/counts", timeout=1).ok, 60, "stand-in")

    def drivers(self) -> list[str]:
        ids: list[str] = requests.get(f"{self.url}/bench/drivers", timeout=60).json()
        return ids

    def requests_seen(self) -> int:
        counts = requests.get(f"{self.url}/bench/counts", timeout=10).json()
        return int(sum(v for k, v in counts.items() if k != "bench"))

    def stop(self) -> None:
        self.daemon.stop()


def service_env(
    database_url: str, standin: Standin, kafka: KafkaBroker, topic: str, interval: float
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_PORT=str(free_port()),
        POLLER_DATABASE_URL=database_url,
        POLLER_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        POLLER_KAFKA_TOPIC=topic,
        POLLER_SPARK_REST_URL=standin.url,
        POLLER_SPARK_UI_URL=standin.url,
        POLLER_SPARK_MASTER_URL="spark://127.0.0.1:7077",
        POLLER_POLL_INTERVAL_SECONDS=str(interval),
        POLLER_LOG_LEVEL="WARNING",
    )
    return env


class Measured:
    """One poller's figures over the measurement window."""

    def __init__(self, name: str, database: str, drivers: int) -> None:
        self.name, self.database, self.drivers = name, database, drivers
        self.rate = self.cpu = self.wall = self.rss = self.master_per_min = 0.0
        self.lag = "-"
        self.starved: int | None = None

    def row(self) -> str:
        per_poll_ms = 1000 * self.cpu / max(1.0, self.rate * self.wall)
        starved = "-" if self.starved is None else str(self.starved)
        return (
            f"| {self.name} | {self.database} | {self.drivers:,} | {self.rate:.0f} "
            f"| {per_poll_ms:.2f} ms | {100 * self.cpu / self.wall:.0f}% | {self.rss:.0f} MB "
            f"| {self.lag} | {self.master_per_min:,.0f} | {starved} |"
        )


def window(
    result: Measured, pid: int, polls: Callable[[], float], standin: Standin, seconds: float
) -> None:
    polls0, cpu0, seen0, t0 = polls(), cpu_s(pid), standin.requests_seen(), time.monotonic()
    time.sleep(seconds)
    polls1, cpu1, seen1, t1 = polls(), cpu_s(pid), standin.requests_seen(), time.monotonic()
    result.wall = t1 - t0
    result.rate = (polls1 - polls0) / result.wall
    result.cpu = cpu1 - cpu0
    result.master_per_min = (seen1 - seen0) * 60 / result.wall
    result.rss = rss_mb(pid)


def run_service(args: argparse.Namespace, workdir: Path, source: str, database: str) -> Measured:
    result = Measured(f"spark-poller ({source})", database, args.drivers)
    standin = Standin(workdir, args.drivers)
    kafka = KafkaBroker(workdir / "kafka").start()
    postgres = Postgres(workdir / "pg", fsync=True).start() if database == "postgresql" else None
    try:
        kafka.create_topic("bench")
        url = postgres.url if postgres else f"sqlite:///{workdir / f'{source}.db'}"
        engine = create_db_engine(url)
        seed(engine, standin.drivers(), args.interval)
        env = service_env(url, standin, kafka, "bench", args.interval)
        env["POLLER_STATUS_SOURCE"] = source
        service = Daemon(
            "spark-poller", [sys.executable, "-m", "poller", "serve"], workdir / "svc.log", env
        )
        base = f"http://127.0.0.1:{env['POLLER_PORT']}"
        try:
            wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 120, "the service")
            time.sleep(args.interval)  # every job has run once: steady state
            before = scrape(base)
            window(
                result,
                service.pid,
                lambda: metric_sum(scrape(base), "spark_poller_polls_total"),
                standin,
                args.measure,
            )
            after = scrape(base)
            p50 = bucket_quantile(histogram(before), histogram(after), 0.5)
            p99 = bucket_quantile(histogram(before), histogram(after), 0.99)
            result.lag = f"<= {p50:g} / {p99:g} s"
        finally:
            service.stop(grace_s=30)  # a clean stop writes the counted polls
        with engine.connect() as conn:
            result.starved = int(
                conn.scalar(sa.text("SELECT count(*) FROM poller_requests WHERE polls = 0")) or 0
            )
        engine.dispose()
    finally:
        if postgres is not None:
            postgres.stop()
        kafka.stop()
        standin.stop()
    return result


def run_baseline(args: argparse.Namespace, workdir: Path, job: str) -> Measured:
    result = Measured(f"apscheduler-{job}", "sqlite", args.drivers)
    standin = Standin(workdir, args.drivers)
    database = f"sqlite:///{workdir / f'baseline-{job}.db'}"
    report = workdir / f"baseline-{job}.json"
    ids = standin.drivers()
    engine = sa.create_engine(database)
    seed_jobs(engine, ids, f"bench.baseline_jobs:{job}_job", [(s,) for s in ids], args.interval)
    engine.dispose()
    argv = [sys.executable, __file__, "--as-baseline", job, "--standin", standin.url]
    argv += ["--database", database, "--report", str(report)]
    proc = subprocess.Popen(argv)
    try:
        wait_for(report.exists, 120, f"the {job} baseline")
        time.sleep(args.interval)

        def runs() -> float:
            return float(json.loads(report.read_text())["runs"])

        first = json.loads(report.read_text())["runs"]
        window(result, proc.pid, runs, standin, args.measure)
        final = json.loads(report.read_text())
        lags: list[float] = final["lags"][first:]
        result.lag = f"{quantile(lags, 0.5):.3f} / {quantile(lags, 0.99):.3f} s"
        result.starved = args.drivers - int(final["distinct"])
    finally:
        proc.terminate()
        proc.wait(30)
        standin.stop()
    return result


def baseline_process(args: argparse.Namespace) -> None:
    """APScheduler 3 with a SQLAlchemyJobStore over the seeded jobs (runs until killed)."""
    from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
    from apscheduler.executors.pool import ThreadPoolExecutor as JobPool
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    baseline_jobs.STANDIN = args.standin  # read by status_job, which the stored jobs name
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=args.database)},
        executors={"default": JobPool(10)},
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
    )
    lags: list[float] = []
    seen: set[str] = set()

    def on_submit(event: JobSubmissionEvent) -> None:
        lags.append(time.time() - event.scheduled_run_times[-1].timestamp())
        seen.add(event.job_id)

    scheduler.add_listener(on_submit, EVENT_JOB_SUBMITTED)
    scheduler.start()
    while True:  # rewritten now and then for the parent to read
        temporary = Path(args.report + ".tmp")
        state = {"runs": len(lags), "lags": lags[:], "distinct": len(seen)}
        temporary.write_text(json.dumps(state))
        temporary.replace(args.report)
        time.sleep(0.5)


HEADER = (
    "| poller | database | in flight | polls/s | CPU per poll | CPU (one core) | peak RSS "
    "| lag p50 / p99 | master requests/min | starved |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--measure", type=float, default=30.0)
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--as-baseline", choices=["status", "noop"], help=argparse.SUPPRESS)
    parser.add_argument("--standin", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_baseline:
        baseline_process(args)
        return
    wanted = args.only.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    rows: list[str] = []
    try:
        for variant in wanted:
            if variant in ("view", "rest", "view-pg", "rest-pg"):
                database = "postgresql" if variant.endswith("-pg") else "sqlite"
                source = variant.removesuffix("-pg")
                rows.append(run_service(args, workdir, source, database).row())
            else:
                rows.append(run_baseline(args, workdir, variant).row())
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.interval:g} s interval, measured over {args.measure:g} s after one interval")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
