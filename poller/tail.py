"""Shows the completion events on our topic as they are, for ``spark-poller events tail``.

A viewer: it reads with the producer's connection and security settings, assigns the topic's
partitions itself and never commits an offset, so no consumer group of anyone's moves.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from poller.config import Settings
from poller.events import producer_config

logger = logging.getLogger(__name__)

# librdkafka settings that only a producer takes; a consumer would warn about each.
PRODUCER_ONLY = frozenset({"enable.idempotence", "acks", "message.timeout.ms", "linger.ms"})
METADATA_TIMEOUT_S = 10.0
POLL_STEP_S = 0.5


class TailError(Exception):
    """The broker could not be read: one line for the user."""


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The producer's connection and security settings, as a consumer that commits nothing."""
    config = {k: v for k, v in producer_config(settings).items() if k not in PRODUCER_ONLY}
    config.update(
        {
            "client.id": "spark-poller-tail",
            # librdkafka wants a group even for assigned partitions; nothing is ever committed.
            "group.id": f"spark-poller-tail-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "error_cb": _on_error,
            "log_level": 0,
        }
    )
    return config


def _on_error(err: Any) -> None:
    logger.warning("kafka: %s", err.str())


def event_line(
    key: bytes | None,
    value: bytes | None,
    headers: Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]] | None,
    partition: int | None,
    offset: int | None,
    timestamp_ms: int | None,
) -> str:
    """One event as one JSON line: key, value (JSON when it is), headers, where and when."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    text = (value or b"").decode("utf-8", errors="replace")
    try:
        shown: Any = json.loads(text)
    except ValueError:
        shown = text
    return json.dumps(
        {
            "key": None if key is None else key.decode("utf-8", errors="replace"),
            "value": shown,
            "headers": {name: _text(raw) for name, raw in pairs},
            "partition": partition,
            "offset": offset,
            "timestamp": None
            if timestamp_ms is None
            else datetime.fromtimestamp(timestamp_ms / 1000, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        },
    )


def _text(raw: str | bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw


def tail(
    settings: Settings,
    show: Callable[[str], None],
    *,
    from_beginning: bool = False,
    request_id: str | None = None,
    max_events: int | None = None,
    timeout_s: float | None = None,
) -> int:
    """Show events (only ``request_id``'s, if given) until ``max_events`` were shown or
    ``timeout_s`` passed (forever without either); returns how many were shown.

    Raises TailError when the broker cannot be reached or the topic does not exist."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    topic = settings.kafka_topic
    consumer = Consumer(consumer_config(settings))
    shown = 0
    try:
        try:
            # All topics: asking for ours by name could create it on some brokers.
            wait_s = METADATA_TIMEOUT_S
            if deadline is not None:
                wait_s = max(0.1, min(wait_s, deadline - time.monotonic()))
            metadata = consumer.list_topics(timeout=wait_s)
        except KafkaException:
            raise TailError(f"cannot reach the Kafka broker within {wait_s:g}s") from None
        found = metadata.topics.get(topic)
        if found is None:
            raise TailError(f"topic {topic} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(found.partitions)])
        while max_events is None or shown < max_events:
            step = POLL_STEP_S
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    break
            message = consumer.poll(step)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                logger.warning("kafka: %s", error.str())
                continue
            key = message.key()
            if request_id is not None and key != request_id.encode():
                continue
            kind, stamp = message.timestamp()
            show(
                event_line(
                    key,
                    message.value(),
                    message.headers(),
                    message.partition(),
                    message.offset(),
                    stamp if kind else None,
                )
            )
            shown += 1
    finally:
        consumer.close()
    return shown
