"""Publishes completion events to Kafka (CloudEvents binary mode) and waits for the broker's ack."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudevents.core.bindings.kafka import KafkaMessage, to_binary_event
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import SecretStr

from poller.config import Settings
from poller.errors import PublishFailed
from poller.schemas import CompletionEvent, TraceContext

logger = logging.getLogger(__name__)

EVENT_TYPE = "io.spark-poller.job.completed.v1"
POLL_STEP_S = 0.1
# Which process sent an event (POLLER_REPLICA_ID): beside the CloudEvents headers, not one of them.
REPLICA_HEADER = "poller-replica"
ERROR_REPEAT_S = 60.0

DeliveryCallback = Callable[[str | None], None]


def to_kafka_message(
    event: CompletionEvent, source: str, trace: TraceContext | None = None
) -> KafkaMessage:
    """The event as a Kafka record: key = request_id, CloudEvents attributes in ce_* headers.

    With the submitter's trace context, the distributed tracing extension's ``traceparent`` and
    ``tracestate`` travel as ``ce_traceparent``/``ce_tracestate`` headers."""
    attributes: dict[str, Any] = {
        "id": event.event_id,
        "source": source,
        "type": EVENT_TYPE,
        "subject": event.request_id,
        "time": event.completed_at,
        "datacontenttype": "application/json",
    }
    if trace is not None:
        attributes["traceparent"] = trace.traceparent
        if trace.tracestate is not None:
            attributes["tracestate"] = trace.tracestate
    cloud_event = CloudEvent(attributes=attributes, data=event.model_dump(mode="json"))
    return to_binary_event(cloud_event, key_mapper=lambda _: event.request_id.encode())


def producer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings: idempotent, acks=all, plus the security settings passed through."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": int(settings.kafka_delivery_timeout_s * 1000),
        "linger.ms": 5,
        "client.id": "spark-poller",
        # Topics are created by their owners; a typo or a broker restart must not invent one.
        "allow.auto.create.topics": False,
    }
    optional = {
        "security.protocol": settings.kafka_security_protocol,
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password,
        "ssl.ca.location": settings.kafka_ssl_ca_location,
        **settings.kafka_extra_config,
    }
    for key, value in optional.items():
        if value is not None:
            config[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return config


class EventPublisher:
    """One idempotent producer (acks=all); ``send`` reports each event's delivery by callback."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        source: str,
        delivery_timeout_s: float,
        replica: str | None = None,
    ) -> None:
        self.topic = topic
        self.source = source
        self._replica_header = [] if replica is None else [(REPLICA_HEADER, replica.encode())]
        self.delivery_timeout_s = delivery_timeout_s
        # librdkafka's own log lines go through Python logging, not straight to stderr.
        self._config: dict[str, Any] = {
            **config,
            "error_cb": self._on_error,
            # librdkafka would print every reconnect attempt to stderr; error_cb reports instead.
            "log_level": 0,
        }
        self._last_error = ""
        self._last_error_at = 0.0
        self._lock = threading.Lock()
        self._producer = Producer(self._config)
        self._wedged: Producer | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve_callbacks, name="kafka-callbacks", daemon=True
        )
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        """Log each distinct error once per minute: a down broker reports every retry."""
        text = err.str()
        now = time.monotonic()
        if text != self._last_error or now - self._last_error_at > ERROR_REPEAT_S:
            self._last_error, self._last_error_at = text, now
            logger.warning("kafka: %s", text)

    def _serve_callbacks(self) -> None:
        """Delivery reports fire only inside poll(): one thread serves them for every caller."""
        while not self._stop.is_set():
            with self._lock:
                producer = self._producer
            producer.poll(POLL_STEP_S)
            if self._wedged is producer:
                self._replace_producer(producer)

    def _replace_producer(self, stale: Producer) -> None:
        """An idempotent producer can stay wedged after a broker restart: start afresh."""
        with self._lock:
            if self._producer is not stale:
                return
            logger.warning("replacing the Kafka producer after a failed delivery")
            self._producer = Producer(self._config)
        # Fail what the old producer still holds now, so its senders hear at once.
        stale.purge()
        stale.flush(0)

    def send(
        self, event: CompletionEvent, on_done: DeliveryCallback, trace: TraceContext | None = None
    ) -> object:
        """Queue ``event`` without waiting; ``on_done(None)`` once the broker has it, else
        ``on_done(reason)``. Called back on the producer's callback thread: keep it short.

        Returns the producer that took it (for :meth:`replace_if_stuck`). Raises PublishFailed
        when the event cannot even be queued."""
        message = to_kafka_message(event, self.source, trace)

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and (err.fatal() or err.code() == KafkaError._MSG_TIMED_OUT):
                self._wedged = producer  # replaced by the callback thread, outside this callback
            on_done(None if err is None else f"Kafka did not take the event: {err.str()}")

        with self._lock:
            producer = self._producer
        try:
            producer.produce(
                self.topic,
                key=message.key,
                value=message.value,
                headers=[*message.headers.items(), *self._replica_header],
                on_delivery=on_delivery,
            )
        except (KafkaException, BufferError) as exc:
            raise PublishFailed(f"could not queue the event: {exc}") from exc
        return producer

    def replace_if_stuck(self, producer: object) -> None:
        """No delivery report long past the delivery timeout: ``producer`` (from :meth:`send`)
        is wedged; replaced unless it already was."""
        if isinstance(producer, Producer):
            self._replace_producer(producer)

    def drop_queued(self) -> None:
        """Take back every event not yet handed to the broker (their senders hear a failure):
        this process lost the right to publish them, and the one that has it will."""
        with self._lock:
            producer = self._producer
        producer.purge(in_queue=True, in_flight=False)

    def problem(self, timeout_s: float = 2.0) -> str | None:
        """Why the broker cannot take our events right now, or None when it can."""
        with self._lock:
            producer = self._producer
        try:
            # All topics: asking for ours by name could auto-create it.
            metadata = producer.list_topics(timeout=timeout_s)
        except KafkaException:
            return "broker unreachable"
        if self.topic not in metadata.topics:
            return f"topic {self.topic} missing"
        return None

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        with self._lock:
            remaining = self._producer.flush(timeout_s)
        if remaining:
            logger.warning("%d Kafka messages still unconfirmed at shutdown", remaining)
