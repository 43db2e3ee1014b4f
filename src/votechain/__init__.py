"""votechain: a peer-to-peer proof-of-work blockchain for voting.

The layers, top to bottom. Each imports only from the layers below it, and the
modules of one layer form no cycle: `make lint` checks both (import-linter,
the contracts in pyproject.toml).

    app/        the `votechain` command, the demo, the bench, text rendering
    node/       one peer's runtime: threads, locks, SQLite, peer links; it
                carries out what core.node_state decides
    net/        sockets and threads that move frames and lines: the framed
                connection, the tracker server and client, the control channel
    protocol/   messages and frames, no I/O: peer protocol, control channel,
    | mining/   tracker lines  |  the nonce search: native kernel, pure twin,
                MinerPool of worker processes (protocol and mining are siblings
                that never import each other)
    core/       pure rules, no sockets, threads, clocks or SQLite: block, keys,
                rules, chain, forkchoice, voting, codec (the one strict msgpack
                decoder), node_state (every decision a node makes)
    errors      every exception, by whose fault it is (BadInput, OurBug, Unavailable)

docs/design.md gives the original design and every place votechain departs
from it; docs/protocol.md the bytes on the wire; docs/robustness.md what bad
input and faults do to a node.
"""

from __future__ import annotations

__version__ = "0.1.0"
