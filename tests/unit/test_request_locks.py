"""Per-request locks: one request's holder never blocks another; nothing lingers after use."""

from __future__ import annotations

import threading

from poller.polling import RequestLocks


def test_a_held_request_is_busy_and_another_is_free() -> None:
    locks = RequestLocks()
    inside, leave = threading.Event(), threading.Event()

    def hold_a() -> None:
        with locks.hold("a"):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_a)
    holder.start()
    assert inside.wait(10)
    with locks.hold_if_free("a") as free:
        assert not free
    with locks.hold_if_free("b") as free:
        assert free
    with locks.hold("b"):  # would hang if requests shared a lock
        pass
    leave.set()
    holder.join(10)
    with locks.hold_if_free("a") as free:
        assert free
    assert len(locks) == 0


def test_waiters_share_one_lock_until_the_last_leaves() -> None:
    locks = RequestLocks()
    order: list[int] = []
    first_in, others_queued = threading.Event(), threading.Event()

    def worker(n: int) -> None:
        with locks.hold("same"):
            if n == 0:
                first_in.set()
                others_queued.wait(10)  # the rest now wait on this same lock
            order.append(n)

    first = threading.Thread(target=worker, args=(0,))
    first.start()
    assert first_in.wait(10)
    others = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3)]
    for thread in others:
        thread.start()
    others_queued.set()
    for thread in [first, *others]:
        thread.join(10)
    assert order[0] == 0
    assert sorted(order) == [0, 1, 2, 3]
    assert len(locks) == 0
