"""Thin socket-and-thread shells around `votechain.protocol`: they move bytes.

- `sockets`: helpers every server shares (wake a blocked thread, accept).
- `framed`: `FramedSocket`, one TCP connection carrying a message set's
  frames, with read timeouts and frame deadlines.
- `connection`: `Connection`, a FramedSocket for the peer protocol, plus the
  handshake.
- `control_server`, `control_client`: the owner's control channel.
- `tracker_server`, `tracker_client`: the tracker and a peer's link to it.
"""
