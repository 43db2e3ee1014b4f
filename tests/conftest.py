"""Shared test helpers.

``wait_until`` is how tests synchronise with threads and sockets: wait for a
condition under a deadline, never a bare sleep that guesses how long is enough.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], bool], timeout: float = 2.0, *, what: str = "condition"
) -> None:
    """Return as soon as ``predicate()`` is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
