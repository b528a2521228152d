"""A restart with every poll overdue: how soon the service is ready, and how it asks the master.

A database holds N requests in flight whose polls are all overdue by ``--down`` seconds (the
service was down that long). The service starts on it; measured: seconds to ``/healthz`` 200 and
to ``/readyz`` 200 as leader; whether every request was polled within one interval of being
ready (none left unpolled when the interval is over); and the master's requests per second over
1 s windows during that interval: peak / mean (1 is perfectly even). Both status sources, and as
a baseline the same restart with stock APScheduler spreading (``--down`` 0: a planned restart
with nothing overdue).

    python bench/restart.py [--drivers 10000] [--interval 30] [--down 86400]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity import Standin, service_env
from bench.seed import seed
from poller.db import create_db_engine
from poller.devstack import Daemon, KafkaBroker

HEADER = (
    "| status source | overdue | in flight | /healthz 200 | /readyz leader | unpolled after "
    "one interval | master requests/s: mean, peak (1 s) | peak / mean |\n"
    "|---|---|---|---|---|---|---|---|"
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
    per_second = [0] * (last_second - first_second)
    for kind in ("status", "json"):
        for second, n in timeline.get(kind, {}).items():
            if first_second <= int(second) < last_second:
                per_second[int(second) - first_second] += n
    mean = sum(per_second) / len(per_second)
    peak = max(per_second)
    return (
        f"| {source} | {down_s:,.0f} s | {args.drivers:,} | {healthy:.2f} s | {ready:.2f} s "
        f"| {unpolled} | {mean:.1f}, {peak} | {peak / mean if mean else float('nan'):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--down", type=float, default=86_400.0)
    parser.add_argument("--only", default="view,rest")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    rows = []
    try:
        for source in args.only.split(","):
            for down_s in (args.down, 0.0):
                rows.append(run(args, workdir, source, down_s))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.interval:g} s interval; overdue 0: a restart with nothing overdue (baseline)")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
