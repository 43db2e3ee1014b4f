"""What votechain's parties say to each other, with no sockets, threads or clocks.

- `framing`: the one length-prefixed frame (4-byte length, then the payload),
  and `FrameDecoder`, fed bytes as they come; the cap is named per use.
- `messages`: tagged msgpack messages in frames; a `MessageSet` is one
  direction of one protocol (its registry, strict decoder and frame cap).
- `peer`: the peer-to-peer protocol's messages (Hello, Add, Blocks...).
- `control`: the control channel's requests and replies (NodeStatus among them).
- `tracker_lines`: the tracker's text protocol (lines, not frames).

The strict msgpack decoder and field checks under all of them are
`votechain.core.codec`, shared with stored blocks.
"""
