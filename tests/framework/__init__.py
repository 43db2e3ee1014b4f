"""votechain's test framework (Bitcoin Core's test_framework is the model): one
`wait_until`, the in-process network harness shared with the benchmarks, fakes,
and in-memory connection pairs for protocol tests."""
