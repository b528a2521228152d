"""Time from a driver's terminal state to its completion event, side by side with a baseline.

Starts a local Spark cluster, a Kafka broker and the service (SQLite store, 1 s poll interval),
submits drivers through the service, and watches every driver with a 20 ms status probe to learn
when it really ended. Two publishers watch the same drivers:

- spark-poller: the service itself (durable record, scheduler, ack-awaited publish);
- baseline: a bare loop that polls every driver once a second and produces straight to Kafka, with
  no database and no scheduler: the floor that any 1 s poller can reach.

Latency = the event's Kafka timestamp minus the moment the probe first saw the terminal state.

    python bench/latency.py [--drivers 12] [--interval 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from poller.devstack import Daemon, KafkaBroker, SparkStandalone, free_port, wait_for

TERMINAL = {"FINISHED", "FAILED", "KILLED", "ERROR"}
JOB = "import sys, time\ntime.sleep(float(sys.argv[1]))\n"


def status(rest_url: str, submission_id: str) -> str | None:
    answer = requests.get(f"{rest_url}/v1/submissions/status/{submission_id}", timeout=5).json()
    state = answer.get("driverState")
    return str(state) if state else None


def probe(rest_url: str, ids: list[str], ended_at: dict[str, float], stop: threading.Event) -> None:
    """Record the first moment each driver is seen terminal (20 ms resolution)."""
    while not stop.is_set() and len(ended_at) < len(ids):
        for sid in ids:
            if sid not in ended_at and status(rest_url, sid) in TERMINAL:
                ended_at[sid] = time.time()
        time.sleep(0.02)


def baseline(
    rest_url: str,
    bootstrap: str,
    topic: str,
    ids: list[str],
    interval_s: float,
    stop: threading.Event,
) -> None:
    """The simplest poller: status every interval, produce and flush on a terminal state."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    pending = set(ids)
    while pending and not stop.is_set():
        started = time.monotonic()
        for sid in sorted(pending):
            if status(rest_url, sid) in TERMINAL:
                producer.produce(topic, key=sid.encode(), value=b"{}")
                producer.flush(10)
                pending.discard(sid)
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def event_times(bootstrap: str, topic: str, count: int, key_of: dict[str, str]) -> dict[str, float]:
    """Kafka timestamp (s) of the first event per driver, keyed by submission id."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(seen) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        key = (message.key() or b"").decode()
        sid = key_of.get(key, key)
        seen.setdefault(sid, message.timestamp()[1] / 1000)
    consumer.close()
    return seen


def summary(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{name:<14} n={len(ordered):<3} mean={statistics.mean(ordered):6.3f}s "
        f"p50={statistics.median(ordered):6.3f}s p95={p95:6.3f}s max={ordered[-1]:6.3f}s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=12)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    spark = SparkStandalone(work / "spark", cores=4, memory="8g").start()
    kafka = KafkaBroker(work / "kafka").start()
    kafka.create_topic("service-events")
    kafka.create_topic("baseline-events")
    port = free_port()
    env = {
        **os.environ,
        "POLLER_PORT": str(port),
        "POLLER_DATABASE_URL": f"sqlite:///{work / 'poller.db'}",
        "POLLER_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "POLLER_KAFKA_TOPIC": "service-events",
        "POLLER_SPARK_REST_URL": spark.rest_url,
        "POLLER_SPARK_MASTER_URL": spark.master_url,
        "POLLER_POLL_INTERVAL_SECONDS": str(args.interval),
        "POLLER_LOG_LEVEL": "WARNING",
    }
    service = Daemon(
        "spark-poller", [sys.executable, "-m", "poller", "serve"], work / "service.log", env
    )
    stop = threading.Event()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{base}/healthz", timeout=1).ok, 60, "the service")
        job = work / "job.py"
        job.write_text(JOB)
        key_of: dict[str, str] = {}
        for i in range(args.drivers):
            body = {
                "request_id": f"bench-{i}",
                "job": {
                    "app_resource": f"file:{job}",
                    "app_args": [str(1 + i % 4)],
                    "spark_properties": {
                        "spark.pyspark.python": sys.executable,
                        "spark.driver.memory": "256m",
                    },
                },
            }
            answer = requests.post(f"{base}/submit", json=body, timeout=30)
            answer.raise_for_status()
            key_of[f"bench-{i}"] = answer.json()["submission_id"]
        ids = list(key_of.values())
        ended_at: dict[str, float] = {}
        workers = [
            threading.Thread(target=probe, args=(spark.rest_url, ids, ended_at, stop)),
            threading.Thread(
                target=baseline,
                args=(
                    spark.rest_url,
                    kafka.bootstrap_servers,
                    "baseline-events",
                    ids,
                    args.interval,
                    stop,
                ),
            ),
        ]
        for worker in workers:
            worker.start()
        service_at = event_times(kafka.bootstrap_servers, "service-events", len(ids), key_of)
        baseline_at = event_times(kafka.bootstrap_servers, "baseline-events", len(ids), {})
        stop.set()
        for worker in workers:
            worker.join()
        print(
            f"terminal state -> event on the broker, {len(ids)} drivers, "
            f"poll interval {args.interval:g}s"
        )
        for name, times in [("spark-poller", service_at), ("baseline", baseline_at)]:
            print(
                summary(name, [times[s] - ended_at[s] for s in ids if s in times and s in ended_at])
            )
        return 0
    finally:
        stop.set()
        service.stop()
        kafka.stop()
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
