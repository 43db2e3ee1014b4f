"""`python -m votechain`: the same as the `votechain` command."""

from __future__ import annotations

import sys

from votechain.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
