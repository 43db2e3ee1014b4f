"""Front ends: `cli` (the `votechain` command), `network_cli` (its `network`
steps) and `args` (argument types), `demo` (a local network in processes),
`bench` (measuring miner rates) and `bench_report` (its table, JSON and
chart), `verify` (the offline audit), `render` (tables and rates as text)."""
