"""`wait_until`: how tests synchronise with threads, sockets and processes; and
`wait_idle`, the same wait for "this process's CPU is back to idle".

A test waits for a condition under a deadline, never for a bare sleep that
guesses how long is enough (Bitcoin Core's `wait_until` is the model). The
deadline is a bound on failure, not a guess at speed: a condition that holds
returns at once, so deadlines cost nothing when they are generous, and
generous ones keep a loaded 2-core machine from failing a correct test.

VOTECHAIN_TIMEOUT_FACTOR (default 1) multiplies every deadline, as Bitcoin
Core's --timeout-factor does, for machines slower still (sanitizers, CI under
heavy load).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

TIMEOUT_FACTOR_ENV = "VOTECHAIN_TIMEOUT_FACTOR"

# When a test names no deadline: ample for anything in-process (a thread to
# block, a socket to close, a log line to appear), which takes milliseconds.
DEFAULT_TIMEOUT = 10.0

# Polling starts fast (most conditions hold within a millisecond or two) and
# backs off to this, so a predicate that costs a control-channel round trip
# or a subprocess is not run hundreds of times a second.
MAX_POLL_INTERVAL = 0.02

# "Idle" is under this fraction of one core, measured over IDLE_WINDOW seconds.
# A node at rest wakes a few times a second (tracker poll, resolver), costing
# well under 5%; a spinning thread costs 100%. 20% is far from both.
IDLE_LIMIT = 0.20
IDLE_WINDOW = 0.5


def timeout_factor() -> float:
    """VOTECHAIN_TIMEOUT_FACTOR as a number (1 when unset); a bad value fails loudly."""
    raw = os.environ.get(TIMEOUT_FACTOR_ENV, "")
    if not raw:
        return 1.0
    factor = float(raw)
    if factor < 1.0:
        raise ValueError(f"{TIMEOUT_FACTOR_ENV} must be at least 1, got {raw!r}")
    return factor


def wait_until(
    predicate: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: str = "condition",
    ignoring: tuple[type[Exception], ...] = (),
) -> None:
    """Return as soon as `predicate()` is true; fail the test after `timeout` s.

    `ignoring` lists exceptions that mean "not yet" rather than failure, such as
    a ControlError from a node that is restarting; any other exception from
    `predicate` propagates at once. The timeout's message names `what` and the
    last ignored exception, if any.
    """
    limit = timeout * timeout_factor()
    deadline = time.monotonic() + limit
    interval = 0.001
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except ignoring as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}{detail}")
        time.sleep(interval)  # a poll interval, not a synchronisation: the predicate decides
        interval = min(interval * 2, MAX_POLL_INTERVAL)


def cpu_fraction(window: float = IDLE_WINDOW) -> float:
    """This process's CPU time (all threads) over `window` s, as a fraction of one core."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    threading.Event().wait(window)  # the measuring window itself
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


def wait_idle(timeout: float = DEFAULT_TIMEOUT, limit: float = IDLE_LIMIT) -> float:
    """Return once one window shows the process under `limit` of a core (that fraction);
    fail after `timeout`.

    Several windows are allowed, so a thread finishing its last bit of work (a
    connection being torn down) does not make the test flaky; a thread that spins
    keeps every window busy and fails it."""
    used: list[float] = []

    def idle() -> bool:
        used.append(cpu_fraction())
        return used[-1] < limit

    wait_until(idle, timeout, what=f"this process to use under {limit:.0%} of a core")
    return used[-1]
