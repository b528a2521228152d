"""Empty secrets refuse to start: an empty API token used to switch authentication off."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from poller.config import Settings


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("POLLER_API_TOKEN", ""),
        ("POLLER_API_TOKEN", "   "),
        ("POLLER_API_TOKEN", " token"),
        ("POLLER_KAFKA_SASL_PASSWORD", ""),
        ("POLLER_KAFKA_SASL_PASSWORD", "\t"),
        ("POLLER_DATABASE_URL", ""),
        ("POLLER_KAFKA_EXTRA_CONFIG", '{"ssl.key.password": ""}'),
        ("POLLER_KAFKA_EXTRA_CONFIG", '{"sasl.oauthbearer.client.secret": "  "}'),
    ],
)
def test_empty_secrets_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=var):
        Settings()


def test_set_secrets_and_unset_ones_are_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("POLLER_API_TOKEN", "POLLER_KAFKA_SASL_PASSWORD", "POLLER_KAFKA_EXTRA_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    assert Settings().api_token is None
    monkeypatch.setenv("POLLER_API_TOKEN", "t0ken with inner space")
    monkeypatch.setenv("POLLER_KAFKA_SASL_PASSWORD", "pw")
    monkeypatch.setenv("POLLER_KAFKA_EXTRA_CONFIG", '{"ssl.key.password": "k"}')
    settings = Settings()
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "t0ken with inner space"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        (
            "POLLER_ALLOWED_SPARK_PROPERTIES",
            "spark.jars.packages, spark.driver.extraJavaOptions",
            ["spark.jars.packages", "spark.driver.extraJavaOptions"],
        ),
        ("POLLER_ALLOWED_SPARK_PROPERTIES", '["spark.jars.packages"]', ["spark.jars.packages"]),
        ("POLLER_ALLOWED_ENVIRONMENT_VARIABLES", "PYTHONUNBUFFERED", ["PYTHONUNBUFFERED"]),
        ("POLLER_ALLOWED_MAIN_CLASSES", r'["com\\.acme\\..+"]', [r"com\.acme\..+"]),
        ("POLLER_ALLOWED_MAIN_CLASSES", "", []),
    ],
)
def test_admission_lists_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(Settings(), var.removeprefix("POLLER_").lower()) == expected


def test_a_bad_main_class_pattern_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_ALLOWED_MAIN_CLASSES", "com.acme.(")
    with pytest.raises(ValidationError, match="POLLER_ALLOWED_MAIN_CLASSES: bad pattern"):
        Settings()
