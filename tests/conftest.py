"""Shared test configuration. The helpers live in `tests/framework/` (waiting,
the in-process network, memory connection pairs, processes, fakes); tests
import them from there, e.g. `from framework.waiting import wait_until`."""
