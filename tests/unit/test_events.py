"""The Kafka record we publish for an event (CloudEvents binary mode)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from poller.config import Settings
from poller.events import EVENT_TYPE, producer_config, to_kafka_message
from poller.schemas import CompletionEvent, DriverState, TraceContext, event_id_for

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def failed_event() -> CompletionEvent:
    return CompletionEvent(
        event_id=event_id_for("r-1"),
        request_id="r-1",
        submission_id="driver-1",
        cluster="default",
        state=DriverState.FAILED,
        spark_state="FAILED",
        message=None,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
        completed_at=datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
        polls=10,
        labels={"a": "b"},
    )


def test_binary_mode_record() -> None:
    event = failed_event()
    record = to_kafka_message(event, "spark-poller/test")
    assert record.key == b"r-1"
    assert record.headers["ce_id"] == event.event_id.encode()
    assert record.headers["ce_type"] == EVENT_TYPE.encode()
    assert record.headers["ce_source"] == b"spark-poller/test"
    assert record.headers["ce_specversion"] == b"1.0"
    assert record.headers["ce_time"] == b"2026-01-01T00:05:00Z"
    assert record.headers["content-type"] == b"application/json"
    value = json.loads(record.value)
    assert value["state"] == "FAILED"
    assert value["labels"] == {"a": "b"}
    assert CompletionEvent.model_validate(value) == event
    # Built from the same record, a re-publish is byte-identical.
    assert to_kafka_message(event, "spark-poller/test") == record


def test_security_settings_reach_the_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("POLLER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("POLLER_KAFKA_SASL_USERNAME", "poller")
    monkeypatch.setenv("POLLER_KAFKA_SASL_PASSWORD", "pw-secret")
    monkeypatch.setenv("POLLER_KAFKA_SSL_CA_LOCATION", "/etc/ssl/ca.pem")
    monkeypatch.setenv(
        "POLLER_KAFKA_EXTRA_CONFIG",
        '{"ssl.endpoint.identification.algorithm": "https", "sasl.oauthbearer.client.secret": "x"}',
    )
    settings = Settings()
    config = producer_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "poller"
    assert config["sasl.password"] == "pw-secret"
    assert config["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert config["sasl.oauthbearer.client.secret"] == "x"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert "pw-secret" not in repr(settings)


def test_the_event_carries_the_trace_as_cloudevents_extension_headers() -> None:
    event = failed_event()
    traced = to_kafka_message(
        event, "spark-poller", TraceContext(traceparent=TRACEPARENT, tracestate="a=b")
    )
    assert traced.headers["ce_traceparent"] == TRACEPARENT.encode()
    assert traced.headers["ce_tracestate"] == b"a=b"
    plain = to_kafka_message(event, "spark-poller")
    assert not {"ce_traceparent", "ce_tracestate"} & set(plain.headers)
    assert traced.value == plain.value  # the value is the same with or without a trace
