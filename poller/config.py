"""Service settings, read from POLLER_* environment variables; no I/O at import."""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CLUSTER = "default"
SPARK_UI_PORT = 8080  # spark.master.ui.port's default
CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
PositiveSeconds = Annotated[float, Field(gt=0)]
# Spark's JWSFilter builds its key with jjwt's Keys.hmacShaKeyFor, which refuses HMAC keys shorter
# than 256 bits: the master would reject every token signed with a shorter secret.
JWS_MIN_KEY_BYTES = 32
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_MASTER_HOST_PORT = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})"
)
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def _check_master_url(value: str) -> str:
    """One master, or a standalone HA cluster's masters the way spark-submit takes them."""
    shape = "must be spark://host:port, or spark://host1:port1,host2:port2 for several masters"
    if not value.startswith("spark://"):
        raise ValueError(shape)
    for host_port in value.removeprefix("spark://").split(","):
        match = _MASTER_HOST_PORT.fullmatch(host_port)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise ValueError(shape)
    return value


def _url_list(kind: str) -> BeforeValidator:
    """One URL, a comma-separated string of them, or a list: one URL (of ``kind``) per master.

    Entries are named by position, never quoted: a URL may carry credentials.
    """

    def parse(value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        elif isinstance(value, AnyHttpUrl):
            value = [value]
        if not isinstance(value, list | tuple):
            return value  # the type check refuses it
        urls: list[AnyHttpUrl] = []
        for number, entry in enumerate(value, 1):
            try:
                urls.append(
                    _HTTP_URL.validate_python(entry.strip() if isinstance(entry, str) else entry)
                )
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise ValueError(f"{kind} {number} of {len(value)}: {reason}") from None
        if not urls:
            raise ValueError(f"give at least one {kind}")
        if len({str(url) for url in urls}) != len(urls):
            raise ValueError(f"a {kind} is listed twice")
        return tuple(urls)

    return BeforeValidator(parse)


SparkMasterUrl = Annotated[str, AfterValidator(_check_master_url)]
# A standalone cluster with standby masters lists each master's REST server, tried in order.
RestUrls = Annotated[tuple[AnyHttpUrl, ...], _url_list("REST URL")]
UiUrls = Annotated[tuple[AnyHttpUrl, ...], _url_list("web UI URL")]


def jws_secret_problem(secret: str) -> str | None:
    """Why Spark's JWSFilter could not use ``secret`` as its HS256 key, or None if it can.

    The answer never quotes the secret.
    """
    if not secret:
        return "is empty"
    if not _BASE64URL.fullmatch(secret) or ("=" in secret and len(secret) % 4):
        return "is not base64url (letters, digits, '-' and '_', optionally '='-padded)"
    data = secret.rstrip("=")
    if len(data) % 4 == 1:
        return "is not base64url (its length cannot be decoded)"
    key = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    if len(key) < JWS_MIN_KEY_BYTES:
        return (
            f"decodes to {len(key)} bytes; Spark's JWSFilter needs an HS256 key of at least"
            f" {JWS_MIN_KEY_BYTES} bytes"
        )
    return None


def _check_jws_secret(value: SecretStr | None, variable: str) -> SecretStr | None:
    problem = None if value is None else jws_secret_problem(value.get_secret_value())
    if problem is not None:
        raise ValueError(f"{variable} {problem}")
    return value


class ClusterConfig(BaseModel):
    """Where one named Spark standalone cluster answers, and how to authenticate to it."""

    # Inputs stay out of error texts: a jws_secret is one.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    rest_url: RestUrls
    master_url: SparkMasterUrl
    # The masters' spark.org.apache.spark.ui.JWSFilter.param.secretKey (base64url), when their
    # REST servers run with spark.master.rest.filters=org.apache.spark.ui.JWSFilter.
    jws_secret: SecretStr | None = None
    # Each master's web UI (whose /json/ lists every driver), in the order of rest_url. Unset:
    # each REST URL's host on Spark's default UI port, trusted only if the view it serves names
    # one of master_url's masters.
    ui_url: UiUrls | None = None

    @field_validator("jws_secret")
    @classmethod
    def _usable_jws_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_jws_secret(value, "jws_secret")

    @model_validator(mode="after")
    def _one_ui_per_master(self) -> Self:
        if self.ui_url is not None and len(self.ui_url) != len(self.rest_url):
            raise ValueError(
                f"give one web UI URL per REST URL ({len(self.ui_url)} for {len(self.rest_url)})"
            )
        return self

    @property
    def rest_bases(self) -> tuple[str, ...]:
        """Each master's REST base URL, in the order they are tried."""
        return tuple(str(url).rstrip("/") for url in self.rest_url)

    @property
    def ui_bases(self) -> tuple[str, ...]:
        """Each master's web UI base URL, in the order of :attr:`rest_bases`."""
        if self.ui_url is not None:
            return tuple(str(url).rstrip("/") for url in self.ui_url)
        return tuple(
            f"{url.scheme}://{_bracketed(url.host or '')}:{SPARK_UI_PORT}" for url in self.rest_url
        )

    @property
    def master_addresses(self) -> frozenset[str]:
        """host:port of each master, as master_url names them."""
        return frozenset(self.master_url.removeprefix("spark://").split(","))

    @property
    def rest_base(self) -> str:
        """The first master's REST base URL."""
        return self.rest_bases[0]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _env_name(info: ValidationInfo) -> str:
    return f"POLLER_{(info.field_name or '').upper()}"


def _check_cluster_secrets(clusters: object) -> object:
    """Name the cluster whose jws_secret is unusable (ClusterConfig alone cannot)."""
    if isinstance(clusters, dict):
        for name, cluster in clusters.items():
            secret = cluster.get("jws_secret") if isinstance(cluster, dict) else None
            problem = jws_secret_problem(secret) if isinstance(secret, str) else None
            if problem is not None:
                raise ValueError(f"POLLER_CLUSTERS: cluster {name!r}: jws_secret {problem}")
    return clusters


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

    # Inputs stay out of error texts: several are secrets.
    model_config = SettingsConfigDict(
        env_prefix="POLLER_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    host: str = Field("127.0.0.1", description="address the API listens on")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8000, description="port the API listens on")
    database_url: SecretStr = Field(
        SecretStr("sqlite:///./poller.db"),
        description="requests and poll jobs; postgresql+psycopg://user:pw@host/db in production",
    )
    # Bounds every database wait (connect, pool, lock, statement, a server that stopped answering).
    database_timeout_s: PositiveSeconds = Field(
        3.0, description="bounds every database wait: pool, connect, locks, statements, round trips"
    )

    # API access: a bearer token, compared in constant time; health stays open unless asked.
    api_token: SecretStr | None = Field(
        None, description="bearer token the API requires (unset: no authentication)"
    )
    health_requires_token: bool = Field(
        False, description="also require the API token for /healthz and /readyz"
    )

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Kafka brokers (host:port, comma-separated)"
    )
    kafka_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = Field(
        "spark-job-completions", description="topic for completion events (create it beforehand)"
    )
    kafka_delivery_timeout_s: PositiveSeconds = Field(
        15.0, description="how long one publish waits for the broker's ack"
    )
    kafka_security_protocol: str | None = Field(
        None, description="librdkafka security.protocol, e.g. SASL_SSL"
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="librdkafka sasl.mechanism, e.g. SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(None, description="librdkafka sasl.username")
    kafka_sasl_password: SecretStr | None = Field(None, description="librdkafka sasl.password")
    kafka_ssl_ca_location: str | None = Field(None, description="librdkafka ssl.ca.location")
    # Any other librdkafka producer setting, as a JSON object; values are treated as secrets.
    kafka_extra_config: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="any other librdkafka setting, as a JSON object (values held as secrets)",
    )
    event_source: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        "spark-poller", description="CloudEvents source attribute of the events"
    )

    # One REST URL, or several comma-separated (standalone HA: one per master).
    spark_rest_url: Annotated[RestUrls, NoDecode] = Field(
        (AnyHttpUrl("http://localhost:6066"),),
        description="REST URL of cluster default (several, comma-separated, with standby masters)",
    )
    spark_master_url: SparkMasterUrl = Field(
        "spark://localhost:7077",
        description="master URL for drivers of default; spark://h1:7077,h2:7077 with standbys",
    )
    spark_jws_secret: SecretStr | None = Field(
        None, description="JWSFilter secretKey of the 'default' masters (base64url, 32+ bytes)"
    )
    spark_ui_url: Annotated[UiUrls | None, NoDecode] = Field(
        None,
        description="web UI URL of each master of default, as rest_url (unset: host:8080)",
    )
    clusters: Annotated[dict[str, ClusterConfig], NoDecode] = Field(
        default_factory=dict,
        description='more clusters, JSON: {"name": {"rest_url": ..., "master_url": ...}}',
    )
    spark_timeout_s: PositiveSeconds = Field(10.0, description="timeout of each Spark REST call")
    # One GET of the master's /json/ answers for every running driver of a cluster; "rest" asks
    # the REST status of each driver at each of its polls.
    status_source: Literal["view", "rest"] = Field(
        "view", description="view (one /json/ per cluster per refresh) or rest (one call per poll)"
    )
    status_view_max_age_s: PositiveSeconds | None = Field(
        None, description="oldest cluster view a poll may use (unset: interval/3, at most 10s)"
    )
    spark_client_version: str = Field("4.3.0", description="clientSparkVersion sent on submit")
    # Regular expressions; when set, a job's app_resource must fully match one of them, and so
    # must every resource its properties make the driver load (poller/admission.py).
    allowed_app_resources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="regexes every resource a job loads must match (unset: callers are trusted)",
    )
    # Under that allow-list, what callers may still set although it loads code from elsewhere:
    # property names, environment variable names, main class regular expressions.
    allowed_spark_properties: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="under the allow-list, code-loading properties callers may still set",
    )
    allowed_environment_variables: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="under the allow-list, code-loading variables a job may still set",
    )
    allowed_main_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="under the allow-list, regexes main_class must match"
    )

    poll_interval_seconds: PositiveSeconds = Field(
        30.0, description="seconds between status polls of one driver"
    )
    scheduler_threads: Annotated[int, Field(ge=1, le=256)] = Field(
        10, description="poll runs in parallel"
    )
    # Worker threads for the API's blocking handlers (health never needs one).
    api_threads: Annotated[int, Field(ge=1, le=1024)] = Field(
        40, description="worker threads for the API's blocking handlers"
    )
    # Clusters taken out of POLLER_CLUSTERS on purpose: their requests in flight end LOST.
    retired_clusters: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="clusters removed on purpose (comma-separated): their requests end LOST",
    )
    reconcile_interval_s: PositiveSeconds = Field(
        60.0, description="how often poll jobs are checked against request records"
    )
    shutdown_timeout_s: PositiveSeconds = Field(
        15.0, description="how long a stop waits for running polls"
    )
    # Checked every 2 s by its holder: at least three checks fit in it.
    lease_ttl_s: Annotated[float, Field(ge=6)] = Field(
        10.0,
        description="PostgreSQL: a leader that stops checking its lease (frozen, SIGSTOPped) "
        "loses it after this long, and a standby takes over",
    )

    shards: Annotated[int, Field(ge=1, le=256)] = Field(
        1,
        description="PostgreSQL: slices of the requests, each polled by one replica at a time "
        "(its own job table and lease); replicas share them, so capacity grows with replicas. "
        "Fixed once requests are stored: a start with another count is refused",
    )
    replica_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="this process's name in the lease table, in `/readyz` and in the "
        "`poller-replica` header of the events it publishes; unset: host name and PID (on "
        "Kubernetes, the pod name)",
    )

    # When to give up on a driver.
    lost_after_unknown_polls: Annotated[int, Field(ge=1)] = Field(
        10, description="consecutive 'unknown driver' answers before LOST"
    )
    max_submitted_s: PositiveSeconds | None = Field(
        None, description="longest wait in SUBMITTED before TIMED_OUT (unset: no limit)"
    )
    max_tracking_s: PositiveSeconds | None = Field(
        None, description="longest tracking of one request before TIMED_OUT (unset: no limit)"
    )
    kill_on_timeout: bool = Field(False, description="kill the driver when it times out")
    kill_confirm_timeout_s: PositiveSeconds = Field(
        60.0, description="how long DELETE ?kill=true waits for Spark to confirm"
    )
    # A FAILED, ERROR or KILLED driver's reason comes from its log on the worker that ran it;
    # the event waits for it at most this long, and goes without it (saying why) after.
    failure_lookup_s: float = Field(
        2.0,
        ge=0,
        le=30,
        description="most an ending's event waits for the driver's log (0: no lookup)",
    )
    # Finished requests (their event out) stay queryable this long, then are deleted.
    retention_days: int = Field(
        30, ge=0, le=36500, description="days a finished request stays queryable (0: forever)"
    )
    # A create whose answer was lost may have made the driver: it is looked for this long (by
    # the tag every create carries) before the request ends SUBMIT_UNKNOWN.
    recovery_search_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="how long a driver whose create answer was lost is looked for (0: not)",
    )
    failure_log_tail_bytes: int = Field(
        4096, ge=0, le=65536, description="bytes of the driver's log an event carries (0: none)"
    )

    # Operations.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    # One JSON object per line for log shippers; "text" for humans at a terminal.
    log_format: Literal["json", "text"] = Field(
        "json", description="json (one object per line, for log shippers) or text (for humans)"
    )
    # Bring our tables to the current schema at start (alembic); off when a deploy step does it.
    auto_migrate: bool = Field(
        True, description="bring the database schema up to date at start (alembic)"
    )
    # Off by default: the API's own lines say what matters; one line per call is for debugging.
    access_log: bool = Field(False, description="log one line per HTTP request (uvicorn's)")

    @field_validator("log_level", "log_format", "status_source", mode="before")
    @classmethod
    def _case_blind(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator("clusters", mode="before")
    @classmethod
    def _parse_clusters(cls, value: object) -> object:
        return _check_cluster_secrets(_json_env("POLLER_CLUSTERS", value) or {})

    @field_validator("spark_jws_secret")
    @classmethod
    def _usable_jws_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_jws_secret(value, "POLLER_SPARK_JWS_SECRET")

    @field_validator("kafka_extra_config", mode="before")
    @classmethod
    def _parse_kafka_extra(cls, value: object) -> object:
        return _json_env("POLLER_KAFKA_EXTRA_CONFIG", value) or {}

    @field_validator(
        "allowed_app_resources",
        "allowed_spark_properties",
        "allowed_environment_variables",
        "allowed_main_classes",
        "retired_clusters",
        mode="before",
    )
    @classmethod
    def _parse_list(cls, value: object, info: ValidationInfo) -> object:
        """A JSON list, or comma-separated names or patterns."""
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return _json_env(_env_name(info), value) or []

    @field_validator("allowed_app_resources", "allowed_main_classes")
    @classmethod
    def _compile_patterns(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                msg = f"{_env_name(info)}: bad pattern {pattern!r}: {exc}"
                raise ValueError(msg) from None
        return value

    @field_validator("database_url", "api_token", "kafka_sasl_password")
    @classmethod
    def _refuse_empty_secret(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        """An empty secret is a mistake, never a setting: an empty API token let anyone in."""
        if value is None:
            return None
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError(f"{_env_name(info)} is empty; leave it unset or give it a value")
        if info.field_name == "api_token" and secret != secret.strip():
            # HTTP strips header values: such a token could never be presented.
            raise ValueError("POLLER_API_TOKEN starts or ends with whitespace")
        return value

    @field_validator("kafka_extra_config")
    @classmethod
    def _refuse_empty_extra(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        empty = sorted(key for key, text in value.items() if not text.get_secret_value().strip())
        if empty:
            raise ValueError(f"POLLER_KAFKA_EXTRA_CONFIG: empty value for {', '.join(empty)}")
        return value

    @field_validator("clusters")
    @classmethod
    def _check_cluster_names(cls, value: dict[str, ClusterConfig]) -> dict[str, ClusterConfig]:
        for name in value:
            if not re.match(CLUSTER_NAME_PATTERN, name):
                raise ValueError(f"POLLER_CLUSTERS: bad cluster name {name!r}")
        return value

    @model_validator(mode="after")
    def _shards_need_postgresql(self) -> Self:
        if self.shards > 1 and not self.database_url.get_secret_value().startswith("postgresql"):
            raise ValueError(
                "POLLER_SHARDS: more than one shard needs PostgreSQL (several replicas polling "
                "one store); SQLite is one process"
            )
        return self

    @model_validator(mode="after")
    def _add_default_cluster(self) -> Self:
        uis, rests = self.spark_ui_url, self.spark_rest_url
        if uis is not None and len(uis) != len(rests):
            raise ValueError(
                f"POLLER_SPARK_UI_URL: give one web UI URL per URL of POLLER_SPARK_REST_URL "
                f"({len(uis)} for {len(rests)})"
            )
        if DEFAULT_CLUSTER not in self.clusters:
            default = ClusterConfig(
                rest_url=self.spark_rest_url,
                master_url=self.spark_master_url,
                jws_secret=self.spark_jws_secret,
                ui_url=self.spark_ui_url,
            )
            object.__setattr__(self, "clusters", {DEFAULT_CLUSTER: default, **self.clusters})
        return self
