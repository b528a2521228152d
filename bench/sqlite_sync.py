"""What durable SQLite commits cost: single-row inserts, synchronous=NORMAL vs FULL side by side.

Each insert is one ``RequestStore.insert`` (one transaction, one commit), as a ``POST /submit``
makes before Spark hears of the job. In WAL mode NORMAL skips the fsync at commit, so an OS crash
or power loss can roll back requests already answered 202; FULL (the service's setting) syncs the
WAL at every commit. Rounds alternate between the two so drift in the disk's speed hits both.

    python bench/sqlite_sync.py [--inserts 500] [--rounds 3] [--dir .]

The database files go in ``--dir`` (default: the current directory): put it on the disk the service
would use, since a tmpfs makes fsync free.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from poller.db import create_db_engine
from poller.store import RequestStore

MODES = ("NORMAL", "FULL")


def one_round(workdir: Path, mode: str, inserts: int, round_no: int) -> list[float]:
    """Seconds taken by each of ``inserts`` single-row inserts into a fresh database."""
    engine = create_db_engine(
        f"sqlite:///{workdir / f'{mode.lower()}-{round_no}.db'}", sqlite_synchronous=mode
    )
    store = RequestStore(engine)
    store.create_schema()
    took = []
    for i in range(inserts):
        started = time.perf_counter()
        store.insert(f"bench-{i}", "default", {"team": "bench"})
        took.append(time.perf_counter() - started)
    engine.dispose()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inserts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sqlite-sync-", dir=args.dir))
    try:
        samples: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_no in range(args.rounds):
            for mode in MODES if round_no % 2 == 0 else reversed(MODES):
                samples[mode] += one_round(workdir, mode, args.inserts, round_no)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{args.rounds} rounds x {args.inserts} single-row inserts (store.insert), "
        f"WAL mode, in {args.dir.resolve()} ({os.uname().sysname})"
    )
    print(f"{'synchronous':<12} {'inserts/s':>10} {'median ms':>10} {'p95 ms':>8} {'p99 ms':>8}")
    for mode in MODES:
        took = sorted(samples[mode])
        centiles = statistics.quantiles(took, n=100)
        print(
            f"{mode:<12} {len(took) / sum(took):>10.0f} {statistics.median(took) * 1e3:>10.2f}"
            f" {centiles[94] * 1e3:>8.2f} {centiles[98] * 1e3:>8.2f}"
        )
    ratio = statistics.median(samples["FULL"]) / statistics.median(samples["NORMAL"])
    print(f"FULL / NORMAL median latency: {ratio:.1f}x")


if __name__ == "__main__":
    main()
