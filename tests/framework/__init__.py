"""votechain's test framework (Bitcoin Core's test_framework is the model).

- `waiting`: `wait_until`, the one way a test waits for a condition (under a
  deadline, scaled by VOTECHAIN_TIMEOUT_FACTOR), and `wait_idle` for "CPU back
  to idle".
- `network`: the in-process network harness shared with the benchmarks
  (`Network`: a tracker and nodes on 127.0.0.1; `converged`, `tips`) and
  `Target`, one node under attack for the hostile-input tests.
- `memory`: connection pairs without a network (`connection_pair`, `raw_pair`),
  `tcp_pair` for what only TCP has, `Background` and `handshake`.
- `processes`: real `votechain` processes (`run`, `Processes`) and the fault
  injection `Cluster` for the end-to-end and fault tests.
- `fakes`: `FakeNode`, an in-memory control handler behind the control channel.
- `fakes_net`: fake parties on real sockets (`scripted_tracker`, `SilentPeer`).
- `backends`: which miner backends this run has (`needs_native`,
  `skip_unless_available`).
"""
