"""HTTP layer: routes, one error mapping, bearer authentication, a body-size limit. Talks only
to the Service."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import AwareDatetime, SecretStr
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poller.errors import (
    ConfigMismatch,
    InvalidRequest,
    LeaseLost,
    PollerError,
    PublishFailed,
    ReplicaIdInUse,
    RequestConflict,
    RequestNotFound,
    SparkRejected,
    SparkUnavailable,
    StoreUnavailable,
    SubmissionUnknown,
    Unauthorized,
)
from poller.metrics import HTTP_REQUESTS, HTTP_SECONDS, exposition
from poller.schemas import (
    REQUEST_ID_PATTERN,
    DriverState,
    ErrorBody,
    JobFilter,
    JobPage,
    JobRecord,
    Phase,
    Republished,
    SubmitRequest,
    SubmitResponse,
    TraceContext,
    trace_context,
)
from poller.service import Service

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_OFFSET = 2**31 - 1  # databases reject larger OFFSETs
SPARK_CLIENT_ERRORS = frozenset({400, 413})
NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})
# Open to probes and scrapers unless POLLER_HEALTH_REQUIRES_TOKEN.
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED_ROUTE = "<unmatched>"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNAUTHORIZED = "missing or wrong bearer token"

ERROR_STATUS: list[tuple[type[PollerError], int]] = [
    (Unauthorized, 401),
    (InvalidRequest, 422),
    (RequestNotFound, 404),
    (RequestConflict, 409),
    (SparkUnavailable, 503),
    (SubmissionUnknown, 504),
    (StoreUnavailable, 503),
    (PublishFailed, 503),
    (LeaseLost, 503),
    (ConfigMismatch, 503),
    (ReplicaIdInUse, 503),
]


def status_for(exc: PollerError) -> int:
    """The HTTP status for one of our errors (the only place this mapping lives)."""
    if isinstance(exc, SparkRejected):
        # Spark judged the job itself: the caller's to fix. Anything else (auth, protocol) is ours.
        return 422 if exc.status_code in SPARK_CLIENT_ERRORS else 502
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_error(send, 413, f"request body over {self.max_bytes} bytes")


async def send_error(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer ``{"detail": ...}`` straight from an ASGI layer, before the app is reached."""
    payload = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class HttpMetrics:
    """Counts and times every request by route template (never the raw path: ids in paths would
    make a series per request), including those turned away before the app (401, 413)."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # for requests the app never routed (refused before, or no route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A client may send any method name: only standard ones become label values.
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = self._template(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)

    def _template(self, scope: Scope) -> str:
        routed = scope.get("route")  # set by the router on the way in
        if routed is not None and hasattr(routed, "path"):
            return str(routed.path)
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", UNMATCHED_ROUTE))
            if match == Match.PARTIAL and partial is None:  # the path, not the method
                partial = str(getattr(route, "path", UNMATCHED_ROUTE))
        return partial or UNMATCHED_ROUTE


class BearerAuth:
    """Answers 401 unless the request carries ``Authorization: Bearer <POLLER_API_TOKEN>``.

    The outermost layer: a caller without the token is turned away before anything reads or
    parses its request, so it learns nothing (no schema, no limits, no docs, no paths). Paths in
    ``open_paths`` (the health checks) pass; with no token configured, everything passes.
    """

    def __init__(self, app: ASGIApp, token: SecretStr | None, open_paths: frozenset[str]) -> None:
        self.app = app
        self.open_paths = open_paths
        self._digest = None if token is None else _digest(token.get_secret_value().encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._digest is None
            or scope["type"] not in ("http", "websocket")
            or _app_path(scope) in self.open_paths
            # Digests of equal length: the comparison's time says nothing about the token.
            or hmac.compare_digest(_digest(_bearer(scope)), self._digest)
        ):
            await self.app(scope, receive, send)
            return
        logger.info("%s %s -> 401: %s", scope.get("method", "WS"), scope["path"], UNAUTHORIZED)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _bearer(scope: Scope) -> bytes:
    """The credentials of the request's ``Authorization: Bearer`` header; empty when absent."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = bytes(value).partition(b" ")
            return credentials.strip() if scheme.lower() == b"bearer" else b""
    return b""


def _app_path(scope: Scope) -> str:
    """The path within the app: behind a proxy, ``path`` may start with ``root_path``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
# Declares the scheme in the OpenAPI document; BearerAuth does the checking.
bearer = HTTPBearer(auto_error=False, description="POLLER_API_TOKEN")
RequestIdPath = Annotated[str, Path(pattern=REQUEST_ID_PATTERN)]


jobs_router = APIRouter()
health_router = APIRouter()


@jobs_router.post("/submit", status_code=202)
def submit(body: SubmitRequest, svc: ServiceDep, request: Request) -> SubmitResponse:
    """Submit a Spark job (``job``) or adopt a driver (``submission_id``), then poll it.

    A W3C ``traceparent`` (and ``tracestate``) header is carried by the completion event as the
    CloudEvents ``ce_traceparent``/``ce_tracestate`` headers; an invalid one is ignored."""
    return svc.jobs.submit(body, trace_from_headers(request))


def trace_from_headers(request: Request) -> TraceContext | None:
    """Trace Context: one ``traceparent`` (several are invalid), and every ``tracestate``
    header joined into one list."""
    parents = request.headers.getlist("traceparent")
    states = request.headers.getlist("tracestate")
    if len(parents) != 1:
        return None
    return trace_context(parents[0], ",".join(states) if states else None)


@jobs_router.get("/jobs/{request_id}")
def get_job(request_id: RequestIdPath, svc: ServiceDep) -> JobRecord:
    """The tracked record of one request."""
    return svc.jobs.get(request_id)


def _utc(value: datetime | None, name: str) -> datetime | None:
    """``value`` in UTC, as the store keeps times; 422 for one no UTC time can be."""
    try:
        return None if value is None else value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(f"{name} is out of range") from None


@jobs_router.get("/jobs")
def list_jobs(
    svc: ServiceDep,
    state: DriverState | None = None,
    since: Annotated[
        AwareDatetime | None, Query(description="submitted at or after (ISO 8601, with zone)")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="submitted before (ISO 8601, with zone)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the page before")
    ] = None,
) -> JobPage:
    """Requests, oldest first, optionally only those in ``state`` and submitted in
    [``since``, ``until``). Finished ones stay for ``POLLER_RETENTION_DAYS``. Page with
    ``cursor`` (each page's ``next_cursor``); ``offset`` paging is kept for small listings."""
    if cursor is not None and offset:
        raise InvalidRequest("give cursor or offset, not both")
    since, until = _utc(since, "since"), _utc(until, "until")
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until")
    return svc.jobs.list_jobs(JobFilter(state, since, until), limit, offset, cursor)


@jobs_router.delete("/jobs/{request_id}", responses={202: {"model": JobRecord}})
def cancel_job(
    request_id: RequestIdPath, svc: ServiceDep, response: Response, kill: bool = False
) -> JobRecord:
    """Stop polling and publish a CANCELLED event.

    ``kill=true`` first asks Spark to kill the driver; the event then waits until Spark confirms
    the driver ended. 200 when the event is out (phase ``done``); 202 while it is still awaited
    (phase ``cancelling``: Spark's confirmation; ``publishing``: Kafka's ack).
    """
    record = svc.jobs.cancel(request_id, kill)
    if record.phase != Phase.DONE:
        response.status_code = 202
    return record


@jobs_router.post("/jobs/{request_id}/republish", status_code=202)
def republish_job(request_id: RequestIdPath, svc: ServiceDep) -> Republished:
    """Publish a finished request's completion event again, exactly as stored (same
    ``event_id``, same value), for a consumer that lost it. 202 once Kafka has it; 409 while
    the request is in flight (its event is not final yet); 503 when Kafka did not take it."""
    return svc.jobs.republish(request_id)


# Health runs on the event loop with no I/O (readiness is checked in the background): it answers at
# once however many handlers are busy in worker threads.
@health_router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """200 while the process serves and its scheduler runs."""
    svc = get_service(request)
    if svc.healthy():
        return JSONResponse({"status": "ok", "role": svc.role})
    return JSONResponse({"status": "failing", "detail": svc.fatal}, status_code=503)


@health_router.get("/metrics", include_in_schema=False)
async def metrics(_request: Request) -> Response:
    """Prometheus metrics (text exposition format); no I/O: store figures are sampled."""
    body, content_type = exposition()
    return Response(body, media_type=content_type)


@health_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the database, the Kafka broker and the scheduler all work; 503 says which not.

    ``role`` is ``leader`` in the process that holds the scheduler lease and polls, ``standby`` in
    one that serves the API and waits for the lease; ``replica`` names this process, ``shards``
    lists the shards it polls."""
    svc = get_service(request)
    checks = svc.readiness()
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "role": svc.role,
            "replica": svc.replica,
            "shards": svc.shards_held(),
            "checks": checks,
        },
        status_code=200 if ready else 503,
    )


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return JSONResponse({"detail": "malformed JSON body"}, status_code=400)
    if any(
        tuple(err.get("loc", ())) == ("body",) and err.get("type") in NOT_AN_OBJECT
        for err in errors
    ):
        return JSONResponse({"detail": "the request body must be a JSON object"}, status_code=400)
    detail = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def create_app(service: Service) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops ``service``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The blocking handlers' worker threads; the database and Spark pools are sized to match.
        to_thread.current_default_thread_limiter().total_tokens = service.settings.api_threads
        service.start()
        try:
            yield
        finally:
            service.stop()

    # /docs and /redoc from the Swagger UI and ReDoc files the package ships: no CDN, so they
    # work offline. No validator badge: it would send the document's URL to a public service.
    app = FastAPIOffline(
        swagger_ui_parameters={"validatorUrl": None},
        title="spark-poller",
        summary="Submits Spark jobs, polls them, publishes one completion event each to Kafka.",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorBody},
            401: {"model": ErrorBody},
            404: {"model": ErrorBody},
            409: {"model": ErrorBody},
            413: {"model": ErrorBody},
            422: {"model": ErrorBody},
            502: {"model": ErrorBody},
            503: {"model": ErrorBody},
            504: {"model": ErrorBody},
        },
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    settings = service.settings
    # Added last, so outermost: authentication comes before the body is read or parsed.
    app.add_middleware(
        BearerAuth,
        token=settings.api_token,
        open_paths=frozenset() if settings.health_requires_token else HEALTH_PATHS,
    )

    # Outermost of all: requests refused by the layers above are counted too.
    routes: list[BaseRoute] = []  # filled below, once every route is in place
    app.add_middleware(HttpMetrics, routes=routes)

    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(PollerError)
    async def _on_poller_error(request: Request, exc: PollerError) -> JSONResponse:
        status = status_for(exc)
        logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    documented = [Depends(bearer)] if settings.api_token is not None else []
    app.include_router(jobs_router, dependencies=documented)
    app.include_router(
        health_router, dependencies=documented if settings.health_requires_token else []
    )
    routes += [route for route in app.routes if isinstance(route, Route | Mount)]
    routes += [*jobs_router.routes, *health_router.routes]
    return app
