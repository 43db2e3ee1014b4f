"""Front ends: `cli` (the `votechain` command), `demo` (a local network in
processes), `bench` (miner rates), `render` (tables and rates as text)."""
