"""Scale-out: 1, 2 and 3 replicas sharing the shards of one PostgreSQL store, and the failover
of a shard's owner under load.

For each replica count R, ``--per-replica`` drivers of the Spark stand-in per replica are in
flight (R times as many in all), the store split into ``--shards`` shards (6: an even share for
1, 2 and 3). Once every shard is held and one interval has passed, over ``--measure`` seconds:
polls per second (all replicas, and the busiest one), CPU per poll, each replica's share of a
core, the lag of runs (p50/p99 over every replica's histogram) and master requests per minute.
R = 1 is the baseline of the same run: one replica holding every shard. Then, with R > 1, one
replica is killed -9: how long until its shards are held again, and the lag over the next
interval, when the survivors poll what it left overdue.

    python bench/scaleout.py [--per-replica 5000] [--replicas 1,2,3] [--shards 6]
        [--interval 30] [--measure 20] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity import (
    Standin,
    bucket_quantile,
    cpu_s,
    histogram,
    metric_sum,
    scrape,
    service_env,
)
from bench.seed import seed
from poller.db import create_db_engine
from poller.devstack import Daemon, KafkaBroker, Postgres, free_port, wait_for

HEADER = (
    "| replicas | in flight | polls/s (all) | polls/s (busiest replica) | CPU per poll "
    "| CPU per replica (one core) | lag p50 / p99 | master requests/min |\n"
    "|---|---|---|---|---|---|---|---|"
)
FAILOVER_HEADER = (
    "| replicas | shards of the killed one | held again after | lag p50 / p99 over the next "
    "interval |\n|---|---|---|---|"
)


class Replica:
    """One ``spark-poller serve`` of the deployment."""

    def __init__(self, env: dict[str, str], name: str, workdir: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.daemon = Daemon(
            f"spark-poller-{name}",
            [sys.executable, "-m", "poller", "serve"],
            workdir / f"{name}.log",
            {**env, "POLLER_PORT": str(port), "POLLER_REPLICA_ID": name},
        )

    def shards(self) -> list[int]:
        try:
            held: list[int] = requests.get(f"{self.url}/readyz", timeout=2).json()["shards"]
        except (requests.RequestException, ValueError, KeyError):
            return []
        return held


def _all_held(replicas: list[Replica], shards: int) -> bool:
    held = sorted(shard for replica in replicas for shard in replica.shards())
    return held == list(range(shards))


def _merged(scrapes: list[str]) -> dict[float, float]:
    """The lag histograms of several replicas, summed bucket by bucket."""
    merged: dict[float, float] = {}
    for text in scrapes:
        for bound, count in histogram(text).items():
            merged[bound] = merged.get(bound, 0.0) + count
    return merged


def _lag(before: list[str], after: list[str]) -> str:
    """p50 / p99 of the runs' lag over every replica's histogram between two scrapes."""
    p50 = bucket_quantile(_merged(before), _merged(after), 0.5)
    p99 = bucket_quantile(_merged(before), _merged(after), 0.99)
    return f"<= {p50:g} / {p99:g} s"


def run(args: argparse.Namespace, workdir: Path, count: int) -> tuple[str, str | None]:
    drivers = args.per_replica * count
    standin = Standin(workdir, drivers)
    kafka = KafkaBroker(workdir / f"kafka-{count}").start()
    postgres = Postgres(workdir / f"pg-{count}", fsync=True).start()
    replicas: list[Replica] = []
    try:
        kafka.create_topic("bench")
        engine = create_db_engine(postgres.url)
        seed(engine, standin.drivers(), args.interval, shards=args.shards)
        engine.dispose()
        env = service_env(postgres.url, standin, kafka, "bench", args.interval)
        env["POLLER_SHARDS"] = str(args.shards)
        replicas = [Replica(env, f"r{i}", workdir) for i in range(count)]
        wait_for(lambda: _all_held(replicas, args.shards), 180, "every shard to be held")
        time.sleep(args.interval)  # every job has run once: steady state
        before = [scrape(r.url) for r in replicas]
        cpu0 = [cpu_s(r.daemon.pid) for r in replicas]
        seen0, t0 = standin.requests_seen(), time.monotonic()
        time.sleep(args.measure)
        after = [scrape(r.url) for r in replicas]
        cpu1 = [cpu_s(r.daemon.pid) for r in replicas]
        seen1, wall = standin.requests_seen(), time.monotonic() - t0
        polls = [
            metric_sum(a, "spark_poller_polls_total") - metric_sum(b, "spark_poller_polls_total")
            for a, b in zip(after, before, strict=True)
        ]
        cpu = [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)]
        row = (
            f"| {count} | {drivers:,} | {sum(polls) / wall:,.0f} | {max(polls) / wall:,.0f} "
            f"| {1000 * sum(cpu) / max(1.0, sum(polls)):.2f} ms "
            f"| {', '.join(f'{100 * c / wall:.0f}%' for c in cpu)} "
            f"| {_lag(before, after)} | {(seen1 - seen0) * 60 / wall:,.0f} |"
        )
        failover = None
        if count > 1:
            failover = _kill_one(args, replicas)
        return row, failover
    finally:
        for replica in replicas:
            replica.daemon.stop(grace_s=30)
        postgres.stop()
        kafka.stop()
        standin.stop()


def _kill_one(args: argparse.Namespace, replicas: list[Replica]) -> str:
    victim, survivors = replicas[-1], replicas[:-1]
    orphaned = victim.shards()
    before = [scrape(r.url) for r in survivors]
    os.kill(victim.daemon.pid, 9)
    killed_at = time.monotonic()
    wait_for(lambda: _all_held(survivors, args.shards), 60, "the survivors to hold every shard")
    took = time.monotonic() - killed_at
    replicas.remove(victim)
    time.sleep(max(0.0, args.interval - took))  # the interval after the kill
    after = [scrape(r.url) for r in survivors]
    return f"| {len(survivors) + 1} | {orphaned} | {took:.2f} s | {_lag(before, after)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--per-replica", type=int, default=5000)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--measure", type=float, default=20.0)
    parser.add_argument("--keep", action="store_true", help="keep the replicas' logs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    rows: list[str] = []
    failovers: list[str] = []
    try:
        for count in (int(n) for n in args.replicas.split(",")):
            row, failover = run(args, workdir, count)
            rows.append(row)
            print(row, flush=True)
            if failover is not None:
                failovers.append(failover)
                print(failover, flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{args.shards} shards, {args.per_replica:,} drivers per replica, {args.interval:g} s "
        f"interval, measured over {args.measure:g} s after one interval"
    )
    print(HEADER)
    print("\n".join(rows))
    if failovers:
        print(f"\nOne replica killed -9 under load\n{FAILOVER_HEADER}")
        print("\n".join(failovers))


if __name__ == "__main__":
    main()
