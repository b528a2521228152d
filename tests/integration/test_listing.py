"""GET /jobs stays bounded as history grows: pages in bytes as well as items, counts capped."""

from __future__ import annotations

from tests.conftest import ServiceFactory
from tests.support import done_rows, fill_requests

BIG_LABELS = {f"label-{i:02d}": "x" * 1024 for i in range(64)}  # the most a request may carry
PAGE_BYTES = 1024 * 1024
HISTORY = 12_000


def test_pages_are_bounded_in_bytes(start_service: ServiceFactory, database_url: str) -> None:
    fill_requests(database_url, done_rows(40, BIG_LABELS, "big"))  # about 70 KB each
    svc = start_service(POLLER_DATABASE_URL=database_url)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        answer = svc.get("/jobs", params={"limit": 1000, "offset": offset})
        assert answer.status_code == 200, answer.text
        assert len(answer.content) <= PAGE_BYTES + 64 * 1024, len(answer.content)
        page = answer.json()
        assert page["total"] == 40
        assert page["items"], page
        seen += [item["request_id"] for item in page["items"]]
        offset = page["next_offset"]
    assert seen == [f"big-{i:05d}" for i in range(40)]  # each once, in order


def test_a_long_history_is_not_counted_on_every_call(
    start_service: ServiceFactory, database_url: str
) -> None:
    fill_requests(database_url, done_rows(HISTORY, {}, "old"))
    svc = start_service(POLLER_DATABASE_URL=database_url)
    page = svc.get("/jobs", params={"limit": 5}).json()
    assert page["total"] is None  # more than the 10,000 ever counted
    assert [item["request_id"] for item in page["items"]] == [f"old-{i:05d}" for i in range(5)]
    assert page["next_offset"] == 5
    last = svc.get("/jobs", params={"limit": 1000, "offset": HISTORY - 3}).json()
    assert len(last["items"]) == 3
    assert last["next_offset"] is None
    running = svc.get("/jobs", params={"state": "RUNNING"}).json()
    assert (running["total"], running["items"], running["next_offset"]) == (0, [], None)
