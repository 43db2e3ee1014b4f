"""Shared test configuration; the helpers themselves live in `tests/framework/`.

`wait_until` is re-exported from `framework.waiting` so that the tests' usual
`from conftest import wait_until` keeps working: it is the one way tests wait
for a condition (under a deadline, never a bare sleep that guesses how long is
enough).
"""

from __future__ import annotations

from framework.waiting import wait_until

__all__ = ["wait_until"]
