"""Settings read from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from poller.config import Settings


def test_defaults_and_default_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("POLLER_CLUSTERS", "POLLER_SPARK_REST_URL", "POLLER_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings()
    assert settings.database_url.get_secret_value() == "sqlite:///./poller.db"
    assert settings.poll_interval_seconds == 30
    assert settings.kafka_topic == "spark-job-completions"
    assert settings.clusters["default"].rest_base == "http://localhost:6066"
    assert settings.clusters["default"].master_url == "spark://localhost:7077"


def test_named_clusters_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "POLLER_CLUSTERS",
        '{"lab": {"rest_url": "http://lab:6066", "master_url": "spark://lab:7077"}}',
    )
    monkeypatch.setenv("POLLER_POLL_INTERVAL_SECONDS", "0.5")
    settings = Settings()
    assert sorted(settings.clusters) == ["default", "lab"]
    assert settings.clusters["lab"].rest_base == "http://lab:6066"
    assert settings.poll_interval_seconds == 0.5


@pytest.mark.parametrize(
    ("var", "value", "phrase"),
    [
        ("POLLER_CLUSTERS", "{not json", "not valid JSON"),
        (
            "POLLER_CLUSTERS",
            '{"a b": {"rest_url": "http://x", "master_url": "spark://x:1"}}',
            "bad cluster name",
        ),
        ("POLLER_CLUSTERS", '{"x": {"rest_url": "http://x"}}', "master_url"),
        ("POLLER_POLL_INTERVAL_SECONDS", "0", "greater than 0"),
        ("POLLER_SPARK_MASTER_URL", "http://nope", "spark://"),
    ],
)
def test_nonsense_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, phrase: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=phrase):
        Settings()
