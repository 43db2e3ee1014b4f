"""The node layer: one votechain peer's runtime, the shell around the pure
NodeState (core/node_state.py) that makes every decision.

- `runtime`: the Node: starts and stops everything, feeds the state its
  inputs under one lock and carries out the effects it returns;
- `config`: NodeConfig, every timeout and cap with the reason for its default;
- `inbound`: the listener and one thread per inbound connection;
- `outbound`: a PeerLink per remote peer, broadcasts, branch fetches;
- `resolver`: the fork-resolution thread, fetching what the state plans;
- `peers`: the tracker registration and the peer list;
- `store`: the chain and the pending votes in SQLite.
"""
