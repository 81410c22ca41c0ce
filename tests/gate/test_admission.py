"""The admission gate: `--threads` slots per worker, first come first served, 503 past
`--max-queue-ms` (end to end: test_operations.py::test_overload_answers_503_...)."""

from __future__ import annotations

import threading
import time

import pytest

from flaskserve.core.errors import Overloaded
from flaskserve.gate.admission import Admission, Ticket
from waiting import eventually


def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    gate = Admission(1, max_wait_s=10)
    holder = Ticket()
    gate.enter(holder)
    waiter = Ticket()
    entered = threading.Thread(target=gate.enter, args=(waiter,))
    entered.start()
    eventually(lambda: gate.waiting == 1, message="the second request waits")
    gate.leave(holder)
    gate.max_wait_s = 0.05  # a newcomer, arriving as the slot is freed, must not take it
    with pytest.raises(Overloaded):
        gate.enter(Ticket())
    entered.join(timeout=10)
    assert waiter.slot, "the request that waited got the freed slot"


def test_a_request_that_cannot_get_a_slot_in_time_is_refused_and_leaks_nothing() -> None:
    gate = Admission(1, max_wait_s=0.05)
    holder = Ticket()
    gate.enter(holder)
    with pytest.raises(Overloaded) as refused:
        gate.enter(Ticket())
    assert refused.value.retry_after == 1
    assert gate.waiting == 0
    gate.leave(holder)
    again = Ticket()
    gate.enter(again)  # the slot came back
    gate.leave(again)
    gate.leave(again)  # a second leave gives nothing back twice
    first = Ticket()
    gate.enter(first)
    with pytest.raises(Overloaded):
        gate.enter(Ticket())


def test_the_wait_for_a_slot_counts_from_when_the_engine_queued_the_request() -> None:
    gate = Admission(1, max_wait_s=60)
    holder = Ticket()
    gate.enter(holder)
    # Queued for a pool thread 61 s ago: its --max-queue-ms is spent, so no wait at all.
    with pytest.raises(Overloaded):
        gate.enter(Ticket(queued=time.monotonic() - 61))
    assert gate.waiting == 0
    gate.leave(holder)
    fresh = Ticket(queued=time.monotonic() - 61)
    gate.enter(fresh)  # a free slot is taken however long the request queued
    gate.leave(fresh)
