"""Argument types for the `votechain` command line (app/cli.py and app/network_cli.py).

Each turns one command-line word into a value or raises
argparse.ArgumentTypeError, which argparse reports as a one-line usage error
(exit 2).
"""

from __future__ import annotations

import argparse


def parse_hostport(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port); argparse turns ValueError into exit 2."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return int(text)


def parse_positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_difficulty(text: str) -> int:
    from votechain.core.rules import MAX_DIFFICULTY

    if not text.isdigit() or int(text) > MAX_DIFFICULTY:
        raise argparse.ArgumentTypeError(f"expected a difficulty 0..{MAX_DIFFICULTY}, got {text!r}")
    return int(text)


def parse_seats(text: str) -> int:
    from votechain.core.membership import MAX_SEATS

    if not text.isdigit() or int(text) > MAX_SEATS:
        raise argparse.ArgumentTypeError(f"expected a member count 0..{MAX_SEATS}, got {text!r}")
    return int(text)


def parse_height(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a block height 0 or more, got {text!r}")
    return int(text)


def parse_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600], got {text!r}")
    return value
