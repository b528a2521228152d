"""Service settings, read from POLLER_* environment variables; no I/O at import."""

from __future__ import annotations

import json
import re
from typing import Annotated, Self

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CLUSTER = "default"
CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
SparkMasterUrl = Annotated[str, Field(pattern=r"^spark://[^\s/]+$")]
PositiveSeconds = Annotated[float, Field(gt=0)]


class ClusterConfig(BaseModel):
    """Where one named Spark standalone cluster answers, and how to authenticate to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rest_url: AnyHttpUrl
    master_url: SparkMasterUrl
    # The master's spark.org.apache.spark.ui.JWSFilter.param.secretKey (base64url), when its
    # REST server runs with spark.master.rest.filters=org.apache.spark.ui.JWSFilter.
    jws_secret: SecretStr | None = None

    @property
    def rest_base(self) -> str:
        return str(self.rest_url).rstrip("/")


def _json_env(name: str, value: object) -> object:
    """Variables holding JSON arrive as strings; an empty one means 'not set'."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc.msg}") from None


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="POLLER_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    database_url: SecretStr = SecretStr("sqlite:///./poller.db")

    # API access: a bearer token, compared in constant time; health stays open unless asked.
    api_token: SecretStr | None = None
    health_requires_token: bool = False

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "spark-job-completions"
    kafka_delivery_timeout_s: PositiveSeconds = 15.0
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    # Any other librdkafka producer setting, as a JSON object; values are treated as secrets.
    kafka_extra_config: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    event_source: str = "spark-poller"

    spark_rest_url: AnyHttpUrl = AnyHttpUrl("http://localhost:6066")
    spark_master_url: SparkMasterUrl = "spark://localhost:7077"
    spark_jws_secret: SecretStr | None = None
    clusters: Annotated[dict[str, ClusterConfig], NoDecode] = Field(default_factory=dict)
    spark_timeout_s: PositiveSeconds = 10.0
    spark_client_version: str = "4.3.0"
    # Regular expressions; when set, a job's app_resource must fully match one of them.
    allowed_app_resources: Annotated[list[str], NoDecode] = Field(default_factory=list)

    poll_interval_seconds: PositiveSeconds = 30.0
    scheduler_threads: Annotated[int, Field(ge=1, le=256)] = 10
    reconcile_interval_s: PositiveSeconds = 60.0
    shutdown_timeout_s: PositiveSeconds = 15.0

    # When to give up on a driver.
    lost_after_unknown_polls: Annotated[int, Field(ge=1)] = 10
    max_submitted_s: PositiveSeconds | None = None
    max_tracking_s: PositiveSeconds | None = None
    kill_on_timeout: bool = False
    kill_confirm_timeout_s: PositiveSeconds = 60.0

    @field_validator("clusters", mode="before")
    @classmethod
    def _parse_clusters(cls, value: object) -> object:
        return _json_env("POLLER_CLUSTERS", value) or {}

    @field_validator("kafka_extra_config", mode="before")
    @classmethod
    def _parse_kafka_extra(cls, value: object) -> object:
        return _json_env("POLLER_KAFKA_EXTRA_CONFIG", value) or {}

    @field_validator("allowed_app_resources", mode="before")
    @classmethod
    def _parse_patterns(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return _json_env("POLLER_ALLOWED_APP_RESOURCES", value) or []

    @field_validator("allowed_app_resources")
    @classmethod
    def _compile_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                msg = f"POLLER_ALLOWED_APP_RESOURCES: bad pattern {pattern!r}: {exc}"
                raise ValueError(msg) from None
        return value

    @field_validator("clusters")
    @classmethod
    def _check_cluster_names(cls, value: dict[str, ClusterConfig]) -> dict[str, ClusterConfig]:
        for name in value:
            if not re.match(CLUSTER_NAME_PATTERN, name):
                raise ValueError(f"POLLER_CLUSTERS: bad cluster name {name!r}")
        return value

    @model_validator(mode="after")
    def _add_default_cluster(self) -> Self:
        if DEFAULT_CLUSTER not in self.clusters:
            default = ClusterConfig(
                rest_url=self.spark_rest_url,
                master_url=self.spark_master_url,
                jws_secret=self.spark_jws_secret,
            )
            object.__setattr__(self, "clusters", {DEFAULT_CLUSTER: default, **self.clusters})
        return self
