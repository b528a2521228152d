"""How clusters are configured: several masters per cluster, and JWS secrets Spark can use."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from poller.config import ClusterConfig, Settings, jws_secret_problem

GOOD_KEY = base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("=")
SHORT_KEY = base64.urlsafe_b64encode(b"SECRET-but-31-bytes-long-000000").decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "POLLER_CLUSTERS",
        "POLLER_SPARK_REST_URL",
        "POLLER_SPARK_MASTER_URL",
        "POLLER_SPARK_JWS_SECRET",
    ):
        monkeypatch.delenv(var, raising=False)


def _problems(exc: ValidationError) -> str:
    """What the cli prints of a refused configuration: each error's message."""
    return "; ".join(str(error["msg"]) for error in exc.errors())


def test_default_cluster_takes_a_comma_separated_list_of_masters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLLER_SPARK_REST_URL", "http://m1:6066, http://m2:6066/")
    monkeypatch.setenv("POLLER_SPARK_MASTER_URL", "spark://m1:7077,m2:7077")
    default = Settings().clusters["default"]
    assert default.rest_bases == ("http://m1:6066", "http://m2:6066")
    assert default.rest_base == "http://m1:6066"
    assert default.master_url == "spark://m1:7077,m2:7077"


def test_one_master_is_a_list_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_SPARK_REST_URL", "http://spark:6066")
    assert Settings().clusters["default"].rest_bases == ("http://spark:6066",)


@pytest.mark.parametrize(
    "rest_url", [["http://a:6066", "https://b:6066"], "http://a:6066,https://b:6066"]
)
def test_named_cluster_lists_masters_as_a_list_or_a_string(
    monkeypatch: pytest.MonkeyPatch, rest_url: object
) -> None:
    clusters = {"ha": {"rest_url": rest_url, "master_url": "spark://a:7077,b:7077"}}
    monkeypatch.setenv("POLLER_CLUSTERS", json.dumps(clusters))
    assert Settings().clusters["ha"].rest_bases == ("http://a:6066", "https://b:6066")


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("http://a:6066,,http://b:6066", "REST URL 2 of 3"),
        ("http://a:6066,ftp://b", "REST URL 2 of 2"),
        ("http://a:6066,http://a:6066", "listed twice"),
        ("", "REST URL 1 of 1"),
    ],
)
def test_bad_rest_url_lists_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, phrase: str
) -> None:
    monkeypatch.setenv("POLLER_SPARK_REST_URL", value)
    with pytest.raises(ValidationError, match=phrase) as raised:
        Settings()
    assert raised.value.errors()[0]["loc"] == ("spark_rest_url",)


def test_an_empty_list_of_masters_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least one REST URL"):
        ClusterConfig(rest_url=[], master_url="spark://a:7077")


@pytest.mark.parametrize(
    "master_url",
    ["spark://a:7077", "spark://a:7077,b:7078", "spark://10.0.0.1:7077", "spark://[::1]:7077"],
)
def test_master_urls_of_one_or_several_masters(master_url: str) -> None:
    assert ClusterConfig(rest_url="http://a:6066", master_url=master_url).master_url == master_url


@pytest.mark.parametrize(
    "master_url",
    [
        "http://a:7077",
        "spark://",
        "spark://a",
        "spark://a:7077,b",
        "spark://a:7077,",
        "spark://a:7077,,b:7077",
        "spark://a:0",
        "spark://a:70777",
        "spark://a:7077/path",
        "spark://a b:7077",
    ],
)
def test_master_urls_of_the_wrong_shape_are_refused(master_url: str) -> None:
    with pytest.raises(ValidationError, match="spark://host:port"):
        ClusterConfig(rest_url="http://a:6066", master_url=master_url)


def test_usable_jws_secrets_pass() -> None:
    assert jws_secret_problem(GOOD_KEY) is None
    assert jws_secret_problem(GOOD_KEY + "=") is None  # padded
    assert jws_secret_problem(base64.urlsafe_b64encode(b"\xfb\xff" * 32).decode()) is None


@pytest.mark.parametrize(
    ("secret", "phrase"),
    [
        ("", "is empty"),
        (SHORT_KEY, "31 bytes"),
        ("YWJj", "3 bytes"),
        (base64.b64encode(b"\xfb\xff" * 32).decode(), "not base64url"),  # '+' and '/'
        (f" {GOOD_KEY}", "not base64url"),
        (f"{GOOD_KEY}===", "not base64url"),
        (GOOD_KEY[:-3] + "A", "cannot be decoded"),
    ],
)
def test_unusable_jws_secrets_are_refused_without_quoting_them(
    monkeypatch: pytest.MonkeyPatch, secret: str, phrase: str
) -> None:
    monkeypatch.setenv("POLLER_SPARK_JWS_SECRET", secret)
    with pytest.raises(ValidationError) as raised:
        Settings()
    problems = _problems(raised.value)
    assert "POLLER_SPARK_JWS_SECRET" in problems
    assert phrase in problems
    if secret.strip():
        assert secret.strip() not in problems
        assert secret.strip() not in str(raised.value)


def test_a_cluster_jws_secret_is_checked_and_its_cluster_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = {"rest_url": "http://a:6066", "master_url": "spark://a:7077", "jws_secret": SHORT_KEY}
    monkeypatch.setenv("POLLER_CLUSTERS", json.dumps({"lab": cluster}))
    with pytest.raises(ValidationError) as raised:
        Settings()
    problems = _problems(raised.value)
    assert "POLLER_CLUSTERS: cluster 'lab': jws_secret decodes to 31 bytes" in problems
    assert SHORT_KEY not in str(raised.value)

    monkeypatch.setenv("POLLER_CLUSTERS", json.dumps({"lab": {**cluster, "jws_secret": GOOD_KEY}}))
    secret = Settings().clusters["lab"].jws_secret
    assert secret is not None
    assert secret.get_secret_value() == GOOD_KEY


def test_a_cluster_made_in_code_checks_its_jws_secret_too() -> None:
    with pytest.raises(ValidationError, match="jws_secret is empty") as raised:
        ClusterConfig(rest_url="http://a:6066", master_url="spark://a:7077", jws_secret="")
    assert "input" not in str(raised.value).split("jws_secret", 1)[1]
