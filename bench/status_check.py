"""One status check of a driver, ours beside ``spark-submit --status``, on a real Spark master.

The usual way to ask a standalone master about a driver from a script is ``spark-submit --status
<id>``: a JVM started per check. Ours is one REST call on a pooled connection of a running
process. Both ask the same real master (from the ``pyspark`` package) about the same running
driver; measured per check: wall time, CPU (the checking process and its children), and peak RSS
of the checking process.

    python bench/status_check.py [--checks 5] [--ours 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poller.devstack import SparkStandalone, spark_home, wait_for

SLEEPER = "import time\ntime.sleep(600)\n"

OURS = """
import json, sys, time
from poller.config import ClusterConfig
from poller.spark import SparkClient
rest, master, sid, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = SparkClient("default", ClusterConfig(rest_url=rest, master_url=master), 10, "4.3.0")
client.status(sid)  # the connection is pooled from here on, as in the service
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(n):
    assert client.status(sid).state is not None
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        rss = int(line.split()[1]) / 1024
print(json.dumps({"wall": wall / n, "cpu": cpu / n, "rss": rss}))
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checks", type=int, default=5)
    parser.add_argument("--ours", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-status-"))
    spark = SparkStandalone(workdir / "spark", cores=1, memory="1g").start()
    try:
        (workdir / "sleep.py").write_text(SLEEPER)
        created = requests.post(
            f"{spark.rest_url}/v1/submissions/create",
            json={
                "action": "CreateSubmissionRequest",
                "clientSparkVersion": "4.3.0",
                "appResource": f"file:{workdir / 'sleep.py'}",
                "mainClass": "org.apache.spark.deploy.PythonRunner",
                "appArgs": [f"file:{workdir / 'sleep.py'}", ""],
                "sparkProperties": {
                    "spark.master": spark.master_url,
                    "spark.submit.deployMode": "cluster",
                    "spark.app.name": "bench-status",
                    "spark.driver.memory": "256m",
                    "spark.pyspark.python": sys.executable,
                },
                "environmentVariables": {"SPARK_ENV_LOADED": "1"},
            },
            timeout=30,
        ).json()
        sid = created["submissionId"]
        status_url = f"{spark.rest_url}/v1/submissions/status/{sid}"
        wait_for(
            lambda: requests.get(status_url, timeout=5).json().get("driverState") == "RUNNING",
            60,
            "the driver to run",
        )
        submit = Path(spark_home()) / "bin" / "spark-submit"
        rest_master = f"spark://127.0.0.1:{spark.rest_url.rsplit(':', 1)[1]}"
        env = {**os.environ, "SPARK_HOME": str(spark_home())}
        walls: list[float] = []
        cpu0 = children_cpu()
        for _ in range(args.checks):
            started = time.perf_counter()
            done = subprocess.run(
                [str(submit), "--master", rest_master, "--status", sid],
                capture_output=True,
                env=env,
                check=False,
            )
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"spark-submit --status failed: {done.stderr[-500:]!r}")
        theirs_cpu = (children_cpu() - cpu0) / args.checks
        theirs_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ours = json.loads(
            subprocess.run(
                [sys.executable, "-c", OURS, spark.rest_url, spark.master_url, sid, str(args.ours)],
                capture_output=True,
                check=True,
            ).stdout
        )
        requests.post(f"{spark.rest_url}/v1/submissions/kill/{sid}", timeout=10)
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    theirs_wall = statistics.median(walls)
    print(f"\none RUNNING driver of a real Spark {spark_version()} master; median of the checks")
    print("| status check | wall per check | CPU per check | peak RSS | checks |")
    print("|---|---|---|---|---|")
    print(
        f"| spark-poller (REST call, pooled connection) | {1000 * ours['wall']:.2f} ms "
        f"| {1000 * ours['cpu']:.2f} ms | {ours['rss']:.0f} MB (whole process) | {args.ours} |"
    )
    print(
        f"| `spark-submit --status` (a JVM per check) | {1000 * theirs_wall:,.0f} ms "
        f"| {1000 * theirs_cpu:,.0f} ms | {theirs_rss:.0f} MB | {args.checks} |"
    )
    print(
        f"| ratio | {theirs_wall / ours['wall']:,.0f}x | {theirs_cpu / ours['cpu']:,.0f}x | "
        f"{theirs_rss / ours['rss']:.1f}x | |"
    )


def spark_version() -> str:
    import pyspark

    return str(pyspark.__version__)


if __name__ == "__main__":
    main()
