"""votechain: a peer-to-peer proof-of-work blockchain for voting.

The layers, bottom up (each imports only those below it):

- Core, pure and I/O-free (no sockets, threads or clocks; `now` is passed in):
  `block` (the block, its encoding and hash layout), `keys` (RSA signing),
  `rules` (whether a block may follow another), `wire` (frames and messages),
  `tracker_protocol` (the tracker's text lines), `forkchoice` (majority vote),
  `voting` (vote transactions and the tally).
- Mining: `mining` (one search contract: the native Cython/C kernel, the
  pure-Python twin, and `MinerPool`, persistent worker processes).
- Shells, thin wrappers that do I/O: `store` (SQLite), `tracker` (the tracker
  server and client), `peer` (a node: listener, broadcast, sync), `control`
  (the owner-only control channel), `cli` (the `votechain` command).
"""

from __future__ import annotations

__version__ = "0.1.0"
