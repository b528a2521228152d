"""N drivers end at once: how soon every completion event is on the topic, none lost, none twice.

The service follows N drivers of the Spark stand-in (a database seeded with N requests in flight,
one interval of steady polling first). First a few drivers end every half second (steady
endings: the latency of one event), then every other driver ends at the same moment
(``POST /bench/end``). Measured: seconds from that moment until the last of the N events is on
the topic (the target: within one interval + 10 s), events lost and duplicated (read back from
the topic), and the latency from the poll that saw an ending to the broker's ack (the service's
``driver_end_to_event_seconds`` histogram: bucket bounds).

Baseline, in the same run: a bare producer with the service's own settings (idempotent,
acks=all) producing N events of the same size back to back, ack latency p50/p99 and the time for
all N: the floor of publishing them.

    python bench/events.py [--drivers 10000] [--interval 30]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import requests
from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity import (
    Standin,
    bucket_quantile,
    histogram,
    metric_sum,
    quantile,
    scrape,
    service_env,
)
from bench.seed import seed
from poller.config import Settings
from poller.db import create_db_engine
from poller.devstack import Daemon, KafkaBroker, wait_for
from poller.events import producer_config

END_METRIC = "spark_poller_driver_end_to_event_seconds"
ONE_AT_A_TIME = 200


def read_all(
    bootstrap: str, topic: str, want: int, deadline: float
) -> tuple[list[tuple[str, str]], float]:
    """(key, event id) of the events on the topic, until ``want`` distinct keys or the deadline,
    and when the last new key was read (epoch seconds)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}"}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[tuple[str, str]] = []
    keys: set[str] = set()
    last_new = time.time()
    try:
        while len(keys) < want and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                key = (message.key() or b"").decode()
                header = dict(message.headers() or []).get("ce_id")
                event_id = header.decode() if isinstance(header, bytes) else str(header)
                seen.append((key, event_id))
                if key not in keys:
                    keys.add(key)
                    last_new = time.time()
    finally:
        consumer.close()
    return seen, last_new


def run_service(args: argparse.Namespace, workdir: Path) -> str:
    standin = Standin(workdir, args.drivers)
    kafka = KafkaBroker(workdir / "kafka").start()
    try:
        kafka.create_topic("bench")
        url = f"sqlite:///{workdir / 'events.db'}"
        engine = create_db_engine(url)
        request_ids = seed(engine, standin.drivers(), args.interval)
        engine.dispose()
        env = service_env(url, standin, kafka, "bench", args.interval)
        base = f"http://127.0.0.1:{env['POLLER_PORT']}"
        service = Daemon(
            "spark-poller", [sys.executable, "-m", "poller", "serve"], workdir / "svc.log", env
        )
        try:
            wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 120, "the service")
            time.sleep(args.interval)
            # Steady endings first: a few drivers every half second, each alone in its poll.
            before = histogram(scrape(base), END_METRIC)
            for _ in range(int(args.trickle_s * 2)):
                requests.post(f"{standin.url}/bench/end?n={args.trickle}", timeout=60)
                time.sleep(0.5)
            trickled = int(args.trickle_s * 2) * args.trickle
            wait_for(
                lambda: metric_sum(scrape(base), "spark_poller_events_published_total") >= trickled,
                args.interval + 60,
                "the steady endings' events",
            )
            steady = histogram(scrape(base), END_METRIC)
            trickle_row = (
                f"| spark-poller, steady endings ({2 * args.trickle}/s) | {trickled:,} | - "
                f"| <= {bucket_quantile(before, steady, 0.5):g} / "
                f"<= {bucket_quantile(before, steady, 0.99):g} s | - | - |"
            )
            # Then every other driver at once.
            before = steady
            ended = requests.post(f"{standin.url}/bench/end", timeout=60).json()["at"]
            deadline = time.monotonic() + args.interval + 120
            events, last = read_all(kafka.bootstrap_servers, "bench", args.drivers, deadline)
            # Read it all again a few seconds later: a late duplicate would show.
            events, _ = read_all(
                kafka.bootstrap_servers, "bench", args.drivers + 1, time.monotonic() + 5
            )
            after = histogram(scrape(base), END_METRIC)
        finally:
            service.stop()
    finally:
        kafka.stop()
        standin.stop()
    per_key = Counter(key for key, _ in events)
    lost = len(set(request_ids) - set(per_key))
    duplicated = sum(n - 1 for n in per_key.values() if n > 1)
    distinct_ids = len({event_id for _, event_id in events})
    p50 = bucket_quantile(before, after, 0.5)
    p99 = bucket_quantile(before, after, 0.99)
    return (
        trickle_row
        + "\n"
        + (
            f"| spark-poller, all the others at once | {args.drivers - trickled:,} "
            f"| {last - ended:.1f} s | <= {p50:g} / <= {p99:g} s | {lost} "
            f"| {duplicated} (event ids: {distinct_ids:,} distinct) |"
        )
    )


def run_baseline(args: argparse.Namespace, workdir: Path) -> str:
    kafka = KafkaBroker(workdir / "kafka-baseline").start()
    try:
        kafka.create_topic("baseline")
        config = producer_config(Settings(kafka_bootstrap_servers=kafka.bootstrap_servers))
        producer = Producer(config)
        value = json.dumps({"state": "FINISHED", "pad": "x" * 700}).encode()
        latencies: list[float] = []

        def delivered(sent: float, err: object, _msg: object) -> None:
            if err is None:
                latencies.append(time.monotonic() - sent)

        started = time.monotonic()
        for i in range(args.drivers):
            sent = time.monotonic()
            while True:
                try:
                    producer.produce(
                        "baseline",
                        key=f"bench-{i:06d}",
                        value=value,
                        on_delivery=functools.partial(delivered, sent),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        producer.flush(120)
        total = time.monotonic() - started
        burst = (
            f"| bare producer (same settings), {args.drivers:,} back to back | {args.drivers:,} "
            f"| {total:.1f} s | {quantile(latencies, 0.5):.3f} / "
            f"{quantile(latencies, 0.99):.3f} s | {args.drivers - len(latencies)} | - |"
        )
        latencies.clear()
        for i in range(ONE_AT_A_TIME):  # the floor of one event's latency
            producer.produce(
                "baseline",
                key=f"alone-{i}",
                value=value,
                on_delivery=functools.partial(delivered, time.monotonic()),
            )
            producer.flush(30)
        alone = (
            f"| bare producer (same settings), one at a time | {ONE_AT_A_TIME} | - "
            f"| {1000 * quantile(latencies, 0.5):.2f} / {1000 * quantile(latencies, 0.99):.2f} ms "
            f"| {ONE_AT_A_TIME - len(latencies)} | - |"
        )
    finally:
        kafka.stop()
    return alone + "\n" + burst


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--trickle", type=int, default=10, help="drivers ended every 0.5 s")
    parser.add_argument("--trickle-s", type=float, default=20.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-"))
    rows = []
    try:
        rows.append(run_service(args, workdir))
        print(rows[-1], flush=True)
        rows.append(run_baseline(args, workdir))
        print(rows[-1], flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nevery driver ends at once; {args.interval:g} s interval; SQLite")
    print(
        "| publisher | events | all on the topic after | ending seen to ack p50 / p99 | lost "
        "| duplicated |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
