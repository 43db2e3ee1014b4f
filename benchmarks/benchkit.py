"""pytest-benchmark, typed: the two calls every benchmark module here makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_benchmark.fixture import BenchmarkFixture


def run(benchmark: BenchmarkFixture, fn: Callable[..., None], **options: Any) -> None:
    """pytest-benchmark's pedantic mode (exact rounds; the library is untyped)."""
    benchmark.pedantic(fn, **options)  # type: ignore[no-untyped-call]


def median(benchmark: BenchmarkFixture) -> float:
    """The median of the rounds just run, in seconds."""
    stats = benchmark.stats
    assert stats is not None
    return float(stats.stats.median)
