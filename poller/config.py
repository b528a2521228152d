"""Service settings, read from POLLER_* environment variables; no I/O at import."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CLUSTER = "default"
CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class ClusterConfig(BaseModel):
    """Where one named Spark standalone cluster answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rest_url: AnyHttpUrl
    master_url: Annotated[str, Field(pattern=r"^spark://[^\s/]+$")]

    @property
    def rest_base(self) -> str:
        return str(self.rest_url).rstrip("/")


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="POLLER_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    database_url: str = "sqlite:///./poller.db"

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "spark-job-completions"
    kafka_delivery_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    event_source: str = "spark-poller"

    spark_rest_url: AnyHttpUrl = AnyHttpUrl("http://localhost:6066")
    spark_master_url: Annotated[str, Field(pattern=r"^spark://[^\s/]+$")] = "spark://localhost:7077"
    clusters: Annotated[dict[str, ClusterConfig], NoDecode] = Field(default_factory=dict)
    spark_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    spark_client_version: str = "4.3.0"

    poll_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    scheduler_threads: Annotated[int, Field(ge=1, le=256)] = 10
    reconcile_interval_s: Annotated[float, Field(gt=0)] = 60.0

    @field_validator("clusters", mode="before")
    @classmethod
    def _parse_clusters(cls, value: object) -> object:
        if isinstance(value, str):
            import json

            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"POLLER_CLUSTERS is not valid JSON: {exc.msg}") from None
        return value

    @field_validator("clusters")
    @classmethod
    def _check_cluster_names(cls, value: dict[str, ClusterConfig]) -> dict[str, ClusterConfig]:
        import re

        for name in value:
            if not re.match(CLUSTER_NAME_PATTERN, name):
                raise ValueError(f"POLLER_CLUSTERS: bad cluster name {name!r}")
        return value

    @model_validator(mode="after")
    def _add_default_cluster(self) -> Self:
        if DEFAULT_CLUSTER not in self.clusters:
            default = ClusterConfig(rest_url=self.spark_rest_url, master_url=self.spark_master_url)
            object.__setattr__(self, "clusters", {DEFAULT_CLUSTER: default, **self.clusters})
        return self
