"""`eventually`: the suite's one way to wait for something, instead of sleeping.

A fixed sleep is either too short on a loaded machine (a flaky failure) or too long everywhere
(a slow suite); polling a condition against a deadline is neither. A module of its own so that
test files, conftest.py and servers.py all import the same helper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The deadline when a test names none: far above anything that should take a moment, so that a
#: slow, shared CI machine is not a failure, while a real hang still ends the test.
TIMEOUT = 30.0


def eventually(
    condition: Callable[[], T],
    *,
    timeout: float = TIMEOUT,
    interval: float = 0.1,
    message: str | Callable[[], str] = "",
) -> T:
    """Call `condition` until it returns something truthy, and return that value.

    Polls at once, then at growing intervals (from 1 ms up to `interval`), so a condition that
    holds at once costs nothing and a slow one is not hammered. When `timeout` seconds pass
    first, fails with `message` (a callable is called then: e.g. to show a log as it is at the
    end) and the condition's last value.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            what = text or getattr(condition, "__name__", "the condition")
            raise AssertionError(
                f"timed out after {timeout:g}s waiting until {what} (last value: {value!r})"
            )
        time.sleep(min(pause, interval, max(deadline - time.monotonic(), 0.0)))
        pause *= 2
