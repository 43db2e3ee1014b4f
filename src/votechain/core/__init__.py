"""The pure core: values in, values out. No sockets, threads, clocks, SQLite or
processes here (the time is passed in as `now_ms`), so every rule is tested
directly.

- `block`: the block and transaction, their canonical encoding and hash layout;
- `codec`: the one strict msgpack decoder and its field checks, with named limits;
- `keys`: RSA-2048 signing and verification (keys cached by DER);
- `rules`: whether one block may follow another;
- `chain`: a whole chain: the one-vote-id-once rule, atomic branch switches;
- `forkchoice`: the majority of the peers' tips, ties broken the same everywhere;
- `voting`: vote transactions, category rules, the tally;
- `membership`: the network, its authority, member certificates, revocations,
  and the registry behind rule 6 (only members write);
- `discipline`: misbehaviour scores and temporary bans, per member key or
  address group;
- `node_state`, `node_effects`: every decision a node makes, and what it
  asks the runtime to do about it.
"""
