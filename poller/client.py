"""HTTP client of our own API, for the command line: one session, explicit timeouts, and every
failure turned into one line and an exit code a script can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

# Exit codes of the commands that talk to the service (2 is a usage error, as everywhere).
EXIT_FAILED = 1
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_NOT_FOUND = 5
EXIT_CONFLICT = 6
EXIT_UNAVAILABLE = 7
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 any other failure; 2 bad usage; 3 service unreachable;"
    " 4 token refused (401); 5 no such request (404); 6 conflict, e.g. the request already"
    " ended (409); 7 service unavailable (503)."
)
DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0
# The API's largest page; the listing follows next_cursor for more.
MAX_PAGE = 1000


class ApiError(Exception):
    """The call failed: ``message`` is one line for the user, ``exit_code`` for scripts."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class Listing:
    """Records of one listing, in the service's order, and where it stopped."""

    items: list[dict[str, Any]]
    total: int | None
    next_cursor: str | None


class ApiClient:
    """Calls a running service's API with the bearer token, if one is given."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float = TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._has_token = bool(token)

    def close(self) -> None:
        self.session.close()

    @property
    def where(self) -> str:
        """The service's address for messages, without any user or password the URL holds."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or self.base_url
        return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"

    def job(self, request_id: str) -> dict[str, Any]:
        """One record. Raises ApiError (404 when unknown)."""
        return self._object(self._call("GET", f"/jobs/{quote(request_id, safe='')}"))

    def cancel(self, request_id: str, kill: bool) -> dict[str, Any]:
        """Cancel a request; returns its record (phase ``done`` once its event is out)."""
        params = {"kill": "true"} if kill else None
        path = f"/jobs/{quote(request_id, safe='')}"
        return self._object(self._call("DELETE", path, params=params))

    def republish(self, request_id: str) -> dict[str, Any]:
        """Publish a finished request's event again; returns its request id, event id, state."""
        path = f"/jobs/{quote(request_id, safe='')}/republish"
        return self._object(self._call("POST", path))

    def list_jobs(self, state: str | None, limit: int | None) -> Listing:
        """Up to ``limit`` records (all of them when None), oldest first, following next_cursor
        across as many pages as it takes: a page may stop early to stay under 1 MiB."""
        items: list[dict[str, Any]] = []
        total: int | None = None
        cursor: str | None = None
        seen: set[str] = set()
        while limit is None or len(items) < limit:
            want = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(items))
            params: dict[str, str | int] = {"limit": want}
            if state is not None:
                params["state"] = state
            if cursor is not None:
                params["cursor"] = cursor
            page = self._object(self._call("GET", "/jobs", params=params))
            found, cursor = page.get("items"), page.get("next_cursor")
            if not isinstance(found, list) or not (cursor is None or isinstance(cursor, str)):
                raise ApiError(f"{self.where} answered a page this client cannot read")
            if cursor is not None and (not found or cursor in seen):
                # A page that does not move on would be asked for again and again.
                raise ApiError(f"{self.where} answered a page that does not move on")
            items += found
            total = page["total"] if isinstance(page.get("total"), int) else None
            if cursor is None:
                break
            seen.add(cursor)
        return Listing(items, total, cursor)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=self.timeout_s, **kwargs
            )
        except requests.ConnectionError as exc:
            reason = "connection refused" if _refused(exc) else "no connection"
            raise ApiError(
                f"cannot reach the service at {self.where}: {reason}", EXIT_UNREACHABLE
            ) from None
        except requests.Timeout:
            raise ApiError(
                f"the service at {self.where} did not answer within {self.timeout_s:g}s",
                EXIT_UNREACHABLE,
            ) from None
        except requests.RequestException as exc:
            raise ApiError(f"cannot call {self.where}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: requests.Response) -> ApiError:
        status = response.status_code
        detail = _detail(response)
        if status == 401:
            hint = (
                "the token in POLLER_API_TOKEN was refused"
                if self._has_token
                else "the service needs a token: set POLLER_API_TOKEN"
            )
            return ApiError(f"unauthorized (401): {hint}", EXIT_UNAUTHORIZED)
        if status == 404:
            return ApiError(f"not found (404): {detail}", EXIT_NOT_FOUND)
        if status == 409:
            return ApiError(f"conflict (409): {detail}", EXIT_CONFLICT)
        if status == 503:
            return ApiError(f"service unavailable (503): {detail}", EXIT_UNAVAILABLE)
        return ApiError(f"HTTP {status}: {detail}")

    def _object(self, response: requests.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ApiError(f"{self.where} answered HTTP {response.status_code} without a record")
        return payload


def _detail(response: requests.Response) -> str:
    """The API's ``detail``, on one line; a 422's list of field errors as "field: message"."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}"
            for e in detail
            if isinstance(e, dict)
        )
    if not isinstance(detail, str) or not detail.strip():
        return response.reason or "no detail"
    return " ".join(detail.split())


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused (nothing listens), rather than lost or unresolved."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return True
        pending += [a for a in error.args if isinstance(a, BaseException)]
        for inner in (error.__cause__, error.__context__, getattr(error, "reason", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return False
