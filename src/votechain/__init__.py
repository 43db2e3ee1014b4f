"""votechain: a peer-to-peer proof-of-work blockchain for voting.

The layers, bottom up (each imports only those below it):

- Core, pure and I/O-free (no sockets, threads or clocks; `now` is passed in):
  `block` (the block, its encoding and hash layout), `keys` (RSA signing),
  `rules` (whether a block may follow another), `chain` (a whole chain:
  duplicates, atomic switches), `forkchoice` (majority vote), `wire` (peer
  frames and messages), `tracker_protocol` (the tracker's text lines),
  `voting` (vote transactions and the tally).
- Mining: `mining` (one search contract: the native Cython/C kernel, the
  pure-Python twin, and `MinerPool`, persistent worker processes).
- Shells, thin wrappers that do I/O: `netutil` and `transport` (sockets and
  frames), `store` (SQLite), `tracker` (server and client), `outbound` (a link
  per remote peer: connection, outbox, branch fetch), `peer` (a node: listener,
  miner and resolver threads), `control` (the owner-only control channel).
- Front ends: `cli` (the `votechain` command), `demo`, `bench`.
"""

from __future__ import annotations

__version__ = "0.1.0"
