"""A restart with every poll overdue: how soon the service is ready, and how it asks the master.

A database holds N requests in flight whose polls are all overdue by ``--down`` seconds (the
service was down that long). The service starts on it; measured: seconds to ``/healthz`` 200 and
to ``/readyz`` 200 as leader; whether every request was polled within one interval of being
ready (none left unpolled when the interval is over); and the master's requests per second over
1 s windows during that interval: peak / mean (1 is perfectly even). Both status sources, and as
the baseline stock APScheduler 3 (SQLAlchemyJobStore, a status GET per run, coalescing, no
misfire limit) starting on the same overdue jobs.

    python bench/restart.py [--drivers 10000] [--interval 30] [--down 86400]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity import Standin, service_env
from bench.seed import seed, seed_jobs
from poller.db import create_db_engine
from poller.devstack import Daemon, KafkaBroker, wait_for

HEADER = (
    "| poller | overdue | in flight | /healthz 200 | ready (leader) | unpolled after one "
    "interval | master requests in it | per second: mean, peak (1 s) | peak / mean |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def run(args: argparse.Namespace, workdir: Path, source: str, down_s: float) -> str:
    standin = Standin(workdir, args.drivers)
    kafka = KafkaBroker(workdir / "kafka").start()
    try:
        kafka.create_topic("bench")
        url = f"sqlite:///{workdir / f'restart-{source}-{down_s:g}.db'}"
        engine = create_db_engine(url)
        seed(engine, standin.drivers(), args.interval, overdue_s=down_s)
        env = service_env(url, standin, kafka, "bench", args.interval)
        env["POLLER_STATUS_SOURCE"] = source
        base = f"http://127.0.0.1:{env['POLLER_PORT']}"
        started = time.monotonic()
        service = Daemon(
            "spark-poller", [sys.executable, "-m", "poller", "serve"], workdir / "svc.log", env
        )
        healthy = ready = None
        try:
            while ready is None and time.monotonic() - started < 120:
                if healthy is None and ok(f"{base}/healthz"):
                    healthy = time.monotonic() - started
                if ok(f"{base}/readyz"):
                    answer = requests.get(f"{base}/readyz", timeout=1).json()
                    if answer.get("role") == "leader":
                        ready = time.monotonic() - started
                time.sleep(0.05)
            assert ready is not None, "the service never became ready"
            first_second = int(time.time())
            time.sleep(args.interval + 1)
            last_second = int(time.time())
        finally:
            service.stop(grace_s=30)  # writes the counted polls
        with engine.connect() as conn:
            unpolled = conn.scalar(sa.text("SELECT count(*) FROM poller_requests WHERE polls = 0"))
        engine.dispose()
        timeline = requests.get(f"{standin.url}/bench/timeline", timeout=10).json()
    finally:
        kafka.stop()
        standin.stop()
    return (
        f"| spark-poller ({source}) | {down_s:,.0f} s | {args.drivers:,} | {healthy:.2f} s "
        f"| {ready:.2f} s | {unpolled} | {rates(timeline, first_second, last_second)} |"
    )


def rates(timeline: dict[str, dict[str, int]], first: int, last: int) -> str:
    """Status and view requests per second over [first, last): mean, peak, and peak / mean."""
    per_second = [0] * (last - first)
    for kind in ("status", "json"):
        for second, n in timeline.get(kind, {}).items():
            if first <= int(second) < last:
                per_second[int(second) - first] += n
    mean = sum(per_second) / len(per_second)
    peak = max(per_second)
    return f"{sum(per_second):,} | {mean:.1f}, {peak} | {peak / mean if mean else float('nan'):.2f}"


def run_baseline(args: argparse.Namespace, workdir: Path) -> str:
    standin = Standin(workdir, args.drivers)
    database = f"sqlite:///{workdir / 'restart-baseline.db'}"
    report = workdir / "restart-baseline.json"
    ids = standin.drivers()
    engine = sa.create_engine(database)
    seed_jobs(
        engine, ids, "bench.baseline_jobs:status_job", [(i,) for i in ids], args.interval, args.down
    )
    engine.dispose()
    argv = [sys.executable, str(Path(__file__).with_name("capacity.py"))]
    argv += ["--as-baseline", "status", "--standin", standin.url, "--database", database]
    argv += ["--report", str(report)]
    started = time.monotonic()
    proc = subprocess.Popen(argv)
    try:
        wait_for(report.exists, 120, "the baseline")
        ready = time.monotonic() - started
        first_second = int(time.time())
        time.sleep(args.interval + 1)
        last_second = int(time.time())
        timeline = requests.get(f"{standin.url}/bench/timeline", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(30)
        standin.stop()
    # APScheduler reports a pass's submissions only once the pass is over, which a backlog can
    # delay past the interval: each status request of the interval is one driver polled.
    asked = sum(
        n
        for second, n in timeline.get("status", {}).items()
        if first_second <= int(second) < last_second
    )
    return (
        f"| apscheduler-status | {args.down:,.0f} s | {args.drivers:,} | - | {ready:.2f} s "
        f"| >= {max(0, args.drivers - asked):,} | {rates(timeline, first_second, last_second)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--down", type=float, default=86_400.0)
    parser.add_argument("--only", default="view,rest,baseline")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    rows = []
    try:
        for variant in args.only.split(","):
            if variant == "baseline":
                rows.append(run_baseline(args, workdir))
            else:
                rows.append(run(args, workdir, variant, args.down))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.interval:g} s interval; the baseline is ready when its scheduler started")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
