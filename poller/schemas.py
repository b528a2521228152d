"""Pydantic shapes: API bodies and responses, the completion event, Spark driver status."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from poller.config import CLUSTER_NAME_PATTERN, DEFAULT_CLUSTER

# 1 to 128 of [A-Za-z0-9._-] but not "." or "..", which mean something in URL paths; spelled
# without look-ahead, which pydantic-core's regex engine lacks.
REQUEST_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
    r"|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}"
    r"|\.\.[A-Za-z0-9._-]{1,126})$"
)
# Spark standalone's driver ids: "driver-" + yyyyMMddHHmmss + "-" + a sequence number (%04d).
SUBMISSION_ID_PATTERN = r"^driver-[0-9]{14}-[0-9]{4,10}$"
# The cluster decides these: a request must not point its driver at another master.
RESERVED_SPARK_PROPERTIES = frozenset({"spark.master", "spark.submit.deployMode"})
# Ours: the tag that finds a driver whose create was interrupted (spark.create_request_body).
RESERVED_SPARK_PREFIX = "spark.poller."
EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c0e-2b6a-5d8e-9a41-5f0c3b7e8d21")

RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
SubmissionId = Annotated[str, StringConstraints(pattern=SUBMISSION_ID_PATTERN)]
ClusterName = Annotated[str, StringConstraints(pattern=CLUSTER_NAME_PATTERN)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
LabelValue = Annotated[str, StringConstraints(max_length=1024)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=64)]
ShortText = Annotated[str, StringConstraints(max_length=4096)]


class DriverState(StrEnum):
    """Spark's DriverState values plus the states this service assigns itself."""

    SUBMITTING = "SUBMITTING"  # ours: recorded, create call not yet answered
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    RELAUNCHING = "RELAUNCHING"
    UNKNOWN = "UNKNOWN"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"  # ours: DELETE /jobs/{request_id}
    LOST = "LOST"  # ours: Spark stopped knowing a driver it had
    TIMED_OUT = "TIMED_OUT"  # ours: a configured time limit ran out
    SUBMIT_UNKNOWN = "SUBMIT_UNKNOWN"  # ours: interrupted mid-submission; never resubmitted

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        DriverState.FINISHED,
        DriverState.FAILED,
        DriverState.KILLED,
        DriverState.ERROR,
        DriverState.CANCELLED,
        DriverState.LOST,
        DriverState.TIMED_OUT,
        DriverState.SUBMIT_UNKNOWN,
    }
)


class Phase(StrEnum):
    """Where a request is in its life; drives what its poll job does next."""

    SUBMITTING = "submitting"
    POLLING = "polling"
    CANCELLING = "cancelling"  # a kill was asked; waiting for Spark to confirm it
    PUBLISHING = "publishing"  # outcome recorded, event not yet confirmed by Kafka
    DONE = "done"


# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; version ff is forbidden.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
TRACESTATE_MAX_CHARS = 512
_TRACESTATE = re.compile(r"[\x20-\x7e]*")


class TraceContext(BaseModel):
    """The submitter's W3C trace context, carried by the completion event so a consumer can
    join the submitter's trace (CloudEvents distributed tracing extension)."""

    traceparent: str
    tracestate: str | None = None


def trace_context(traceparent: str | None, tracestate: str | None) -> TraceContext | None:
    """The trace context of a request's headers, or None when there is none we may propagate.

    Trace Context says an invalid ``traceparent`` is ignored, not refused: tracing must never
    fail a call. A later version's extra fields are dropped (what this version can read is
    kept, as version 00); ``tracestate`` travels only with a valid ``traceparent``, and only
    while it is printable and of the size the specification allows.
    """
    if traceparent is None:
        return None
    value = traceparent.strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, _flags = match.groups()
    rest = value[match.end() :]
    if (
        version == "ff"
        or (version == "00" and rest)
        or (rest and not rest.startswith("-"))
        or trace_id == "0" * 32
        or parent_id == "0" * 16
    ):
        return None
    state = None if tracestate is None else tracestate.strip()
    if not state or len(state) > TRACESTATE_MAX_CHARS or not _TRACESTATE.fullmatch(state):
        state = None
    # Carried on as the version this code speaks: a later version's extra fields are dropped.
    return TraceContext(traceparent="00" + value[2 : match.end()], tracestate=state)


def event_id_for(request_id: str) -> str:
    """The one event id of a request: a re-publish after a crash is recognisably the same event."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, request_id))


class Fence(NamedTuple):
    """A leader's token: the lease of ``shard`` as taken at ``epoch``. A write made with it lands
    only while nobody has taken that lease since."""

    shard: int
    epoch: int


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(Strict):
    """A Spark application to submit in cluster deploy mode."""

    app_resource: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    main_class: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    app_args: Annotated[list[ShortText], Field(max_length=256)] = Field(default_factory=list)
    spark_properties: Annotated[
        dict[Annotated[str, StringConstraints(min_length=1, max_length=256)], ShortText],
        Field(max_length=256),
    ] = Field(default_factory=dict)
    environment_variables: Annotated[
        dict[
            Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], ShortText
        ],
        Field(max_length=128),
    ] = Field(default_factory=dict)

    @property
    def is_python(self) -> bool:
        return self.app_resource.endswith(".py")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.main_class is None and not self.is_python:
            raise ValueError("main_class is required unless app_resource is a .py file")
        reserved = sorted(
            key
            for key in self.spark_properties
            if key in RESERVED_SPARK_PROPERTIES or key.startswith(RESERVED_SPARK_PREFIX)
        )
        if reserved:
            raise ValueError(f"{', '.join(reserved)} is set by the service from the cluster")
        # The service's own tag, written into a property value or an argument, would reach the
        # driver's launch command beside the real one.
        if any(
            RESERVED_SPARK_PREFIX in text
            for text in (*self.spark_properties.values(), *self.app_args, self.app_resource)
        ):
            raise ValueError(f"{RESERVED_SPARK_PREFIX}* is the service's own: not in values")
        return self


class SubmitRequest(Strict):
    """Body of POST /submit: exactly one of ``job`` (submit it) or ``submission_id`` (adopt)."""

    request_id: RequestId | None = None
    cluster: ClusterName = DEFAULT_CLUSTER
    labels: Labels = Field(default_factory=dict)
    job: JobSpec | None = None
    submission_id: SubmissionId | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if (self.job is None) == (self.submission_id is None):
            raise ValueError("give exactly one of 'job' (to submit) or 'submission_id' (to adopt)")
        return self


class SubmitResponse(BaseModel):
    request_id: str
    submission_id: str
    cluster: str
    state: DriverState


class Worker(BaseModel):
    """The Spark worker that ran the driver."""

    id: str
    host: str | None = Field(None, description="The worker's host, as Spark names it.")


class SparkApp(BaseModel):
    """The Spark application the driver ran (its SparkContext), when one could be linked."""

    id: str
    ui_url: str | None = Field(None, description="The application's page on the master's web UI.")


class Failure(BaseModel):
    """Why a driver ended FAILED, ERROR or KILLED, as far as its log and Spark tell."""

    reason: str | None = Field(
        None,
        description="The exception that ended the driver (last line of a Python traceback, or "
        "the root cause of a JVM one), or what Spark said.",
    )
    exception_class: str | None = Field(None, description="e.g. ValueError, java.lang.Error.")
    frame: str | None = Field(None, description="Where it was raised, when the log says.")
    log_tail: str | None = Field(None, description="The end of the log the reason came from.")
    log_source: Literal["stdout", "stderr"] | None = Field(
        None, description="The driver log that was read for the reason."
    )
    note: str | None = Field(None, description="Why no reason (or only part of it) was had.")


class EndDetails(BaseModel):
    """What is known about a run as its ending is fixed, written with the ending."""

    failure: Failure | None = None
    spark_app: SparkApp | None = None
    detection_bound_s: float | None = None


class JobRecord(BaseModel):
    """What the service knows about one request."""

    request_id: str
    cluster: str
    submission_id: str | None
    state: DriverState
    phase: Phase
    spark_state: str | None = None
    message: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    polls: int = 0
    unknown_polls: int = 0
    submitted_at: datetime
    last_polled_at: datetime | None = None
    next_poll_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    completed_at: datetime | None = None
    event_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    # The spark.poller.tag its create carried (never shown: whoever knew it while the driver of
    # a lost create answer is looked for could plant a driver carrying it), and until when.
    spark_tag: str | None = Field(default=None, exclude=True)
    search_until: datetime | None = None
    # The spark.app.name its driver was submitted with: how its application is found.
    spark_app_name: str | None = None
    started_at: datetime | None = None
    worker: Worker | None = None
    spark_app: SparkApp | None = None
    failure: Failure | None = None
    detection_delay_bound_s: float | None = None


class JobFilter(NamedTuple):
    """Which records a listing shows: in ``state`` (any if None), submitted in
    [``since``, ``until``) (open where None)."""

    state: DriverState | None = None
    since: datetime | None = None
    until: datetime | None = None


class JobPage(BaseModel):
    items: list[JobRecord]
    total: int | None = Field(
        description="How many match in all; null when more than 10,000 (never counted further)."
    )
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="Offset of the next page (offset paging); null on the last one, and when "
        "paging by cursor. A page stops early rather than exceed 1 MiB of records."
    )
    next_cursor: str | None = Field(
        None,
        description="Pass as ``cursor`` for the next page; null on the last one. Unlike an "
        "offset it stays right, and fast, however deep and whatever is added meanwhile.",
    )


class Republished(BaseModel):
    """The stored completion event was published again (Kafka has it)."""

    request_id: str
    event_id: str = Field(description="The same as every earlier publication's.")
    state: DriverState


class ErrorBody(BaseModel):
    detail: str | list[dict[str, object]]


class DriverStatus(BaseModel):
    """One status answer; ``found`` is false when Spark does not know the driver. The worker
    is the one Spark placed the driver on, when the answer named it."""

    found: bool
    state: DriverState | None = None
    raw_state: str | None = None
    message: str | None = None
    worker_id: str | None = None
    worker_host: str | None = None


def event_json_schema() -> dict[str, object]:
    """JSON Schema (2020-12) of the event value; shipped as poller/event.schema.json."""
    schema: dict[str, object] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **CompletionEvent.model_json_schema(mode="serialization"),
    }
    return schema


# The version of the event's schema: MAJOR.MINOR. A minor adds optional fields or enum values
# (consumers ignore what they do not know); anything else is a new major. Events before this
# field were 1.0; 1.1 added it; 1.2 the timings, worker, Spark application and failure.
EVENT_SCHEMA_VERSION = "1.2"


class CompletionEvent(BaseModel):
    """The value of the one Kafka message published per request (key = request_id)."""

    model_config = ConfigDict(title="SparkJobCompletion")

    schema_version: str = Field(
        EVENT_SCHEMA_VERSION,
        pattern=r"^1\.[0-9]+$",
        description="MAJOR.MINOR of this schema: within a major, later minors only add optional "
        "fields and enum values.",
    )
    event_id: str = Field(description="Same for every publication of this request's event.")
    request_id: str
    submission_id: str | None
    cluster: str
    state: DriverState = Field(
        description="Final state: FINISHED, FAILED, KILLED, ERROR (Spark's), or CANCELLED, LOST, "
        "TIMED_OUT, SUBMIT_UNKNOWN (the service's)."
    )
    spark_state: str | None = Field(description="Spark's last raw driverState, if one was seen.")
    message: str | None = Field(description="Spark's message, when it gave one.")
    submitted_at: datetime
    completed_at: datetime
    polls: int = Field(description="Status calls made for this request.")
    labels: dict[str, str]
    started_at: datetime | None = Field(
        None, description="When the driver was first seen RUNNING on a worker."
    )
    duration_s: float | None = Field(
        None, description="completed_at - started_at: how long it ran, as far as polls saw."
    )
    detection_delay_bound_s: float | None = Field(
        None,
        description="At most how long after Spark's ending completed_at came, while the "
        "service ran (its poll interval, plus the cluster view's age when that is used).",
    )
    worker: Worker | None = None
    spark_app: SparkApp | None = None
    failure: Failure | None = Field(
        None, description="Set for FAILED, ERROR and KILLED: the reason, or why it is missing."
    )
