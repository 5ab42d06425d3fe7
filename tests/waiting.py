"""Waiting on a condition instead of sleeping a guessed time.

``wait_until`` is for state the code under test changes without telling anyone (a counter, a
slot's state, a file): it returns as soon as the condition holds and fails, naming what it
waited for, when it does not within the timeout. Where the code offers an event or a condition
variable, wait on that instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.005


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s}s for {what}")
        time.sleep(POLL_S)
