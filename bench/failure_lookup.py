"""What the reason of a failed driver adds to its ending: the lookup on a real Spark cluster.

Runs ``--drivers`` Python drivers that fail (a ValueError raised three calls deep, after a few
hundred lines of output) on a real standalone master and worker from the ``pyspark`` package,
waits for all of them to end, then times, for each, what a poll does at its ending:

- the lookup (``FailureLookup.lookup``: the worker's address from the master's view, the end
  of the driver's stdout and stderr from the worker, the reason extracted), with the first
  one (which fetches the view) shown apart;
- beside it the baseline: the status call that saw the ending (``SparkClient.status``), which
  every ending pays anyway.

    python bench/failure_lookup.py [--drivers 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poller.config import ClusterConfig
from poller.devstack import FAST_DRIVER_JAVA_OPTIONS, SparkStandalone, wait_for
from poller.lookup import ClusterLogs, FailureLookup
from poller.master_view import MasterView
from poller.schemas import DriverState, JobRecord, JobSpec, Phase
from poller.spark import SparkClient
from poller.worker_logs import WorkerLogs

FAILING = """\
import sys
for line in range(300):
    print(f"processing line {line}: " + "x" * 60)
def process_partition(index):
    raise ValueError(f"bad partition {index}")
def run():
    process_partition(7)
run()
"""


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drivers", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-lookup-"))
    spark = SparkStandalone(workdir / "spark", cores=2, memory="2g").start()
    try:
        job = workdir / "fail.py"
        job.write_text(FAILING)
        cluster = ClusterConfig(
            rest_url=[spark.rest_url], master_url=spark.master_url, ui_url=[spark.ui_url]
        )
        client = SparkClient("bench", cluster, 10.0, "4.3.0")
        spec = JobSpec(
            app_resource=f"file:{job}",
            spark_properties={
                "spark.pyspark.python": sys.executable,
                "spark.driver.memory": "256m",
                "spark.driver.extraJavaOptions": FAST_DRIVER_JAVA_OPTIONS,
            },
        )
        started = time.monotonic()
        drivers = [client.create(spec, f"lookup-{i:04d}") for i in range(args.drivers)]

        def all_ended() -> bool:
            return all((client.status(d).state or DriverState.UNKNOWN).terminal for d in drivers)

        wait_for(all_ended, 60 + 10 * args.drivers, "every driver to end", step_s=2)
        ran_s = time.monotonic() - started
        view = MasterView("bench", cluster, 10.0)
        lookup = FailureLookup(
            {"bench": ClusterLogs(view, WorkerLogs("bench"), lambda: None)}, 2.0, 4096
        )
        statuses, lookups, reasons = [], [], 0
        first = 0.0
        for i, driver in enumerate(drivers):
            t = time.perf_counter()
            status = client.status(driver)
            statuses.append((time.perf_counter() - t) * 1000)
            record = JobRecord(
                request_id=f"lookup-{i:04d}",
                cluster="bench",
                submission_id=driver,
                state=DriverState.RUNNING,
                phase=Phase.POLLING,
                submitted_at=datetime.now(UTC),
            )
            t = time.perf_counter()
            looked = lookup.lookup(record, status)
            took = (time.perf_counter() - t) * 1000
            if i == 0:
                first = took
            else:
                lookups.append(took)
            reasons += looked.failure.reason == "ValueError: bad partition 7"
        client.close()
        view.close()
    finally:
        spark.stop()
    p50, p99, worst = quantiles(lookups)
    s50, s99, sworst = quantiles(statuses)
    print(f"\n{args.drivers} failed drivers (ran in {ran_s:.0f} s); reason found for {reasons}\n")
    print("| at an ending | p50 | p99 | max |")
    print("|---|---|---|---|")
    print(f"| status call that saw it (baseline) | {s50:.1f} ms | {s99:.1f} ms | {sworst:.1f} ms |")
    print(f"| reason lookup | {p50:.1f} ms | {p99:.1f} ms | {worst:.1f} ms |")
    print(f"| first lookup (fetches the view) | {first:.1f} ms | | |")


if __name__ == "__main__":
    main()
