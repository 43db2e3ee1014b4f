"""`votechain network ...`: the steps of a members-only network, one `cmd_network_*` each.

The organizer creates the network (`create`), each station makes its key and
asks to join (`join`), the organizer certifies it (`admit`), the station
installs the certificate (`install`), and the organizer can revoke a key
(`revoke`). `add_network_command` adds the group to the `votechain` parser
(app/cli.py); `load_membership` and `membership_errors` also serve `votechain
peer`, which checks its membership before it starts.

As in app/cli.py, the modules a step needs are imported inside it, and an
expected failure (a bad file, a directory not admitted) is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from votechain.app.args import parse_difficulty, parse_height, parse_seats
from votechain.app.render import out
from votechain.errors import CliError

if TYPE_CHECKING:
    from votechain.core.membership import Revocations
    from votechain.node.membership_files import Membership

# The parser class of `votechain`'s subcommands (app/cli.py's one-line-error parser).
_P = TypeVar("_P", bound=argparse.ArgumentParser)


@contextlib.contextmanager
def membership_errors() -> Iterator[None]:
    """A bad network, certificate, key or revocation file, a data directory that
    is not admitted, a file we cannot write: the user's to fix, so one line."""
    from votechain.errors import BadCertificate, NotAdmitted

    try:
        yield
    except (BadCertificate, NotAdmitted) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        # "PATH: Permission denied", or the message we gave a FileExistsError.
        text = f"{exc.filename}: {exc.strerror}" if exc.strerror and exc.filename else str(exc)
        raise CliError(text) from exc


def load_membership(args: argparse.Namespace) -> Membership:
    """The network and this data directory's membership of it, checked before
    anything starts, so a peer that may not write says why in one line."""
    from votechain.node import membership_files as files

    with membership_errors():
        network = files.read_network(args.network)
        revocations = files.read_revocations(args.revocations) if args.revocations else None
        return files.load_membership(network, Path(args.data_dir), network_path=args.network,
                                     revocations=revocations, observer=args.observer)


def cmd_network_create(args: argparse.Namespace) -> int:
    from votechain.node import membership_files as files

    with membership_errors():
        network_path, authority_path = files.create_network(args.name, args.difficulty, args.out,
                                                            args.seats)
        network = files.read_network(network_path)
    seats = f", {network.seats} seats" if network.seats else ""
    out(f"network {network.name!r}, difficulty {network.difficulty}{seats}, "
        f"id {network.id.hex()}")
    out(f"public, for every peer and auditor: {network_path}")
    out(f"secret, for the organizer only:     {authority_path} (mode 0600; keep it offline)")
    return 0


def cmd_network_join(args: argparse.Namespace) -> int:
    from votechain.core.keys import KEY_FILE
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    with membership_errors():
        network = files.read_network(args.network)
        member, pub_path = files.join(network, args.data_dir)
    out(f"{args.data_dir} joins network {network.name!r} (id {network.id.hex()})")
    out(f"wrote {pub_path}: send it to the organizer; {args.data_dir / files.NETWORK_COPY} "
        f"is kept, and {args.data_dir / KEY_FILE} stays here")
    out(f"key fingerprint {fingerprint(member).hex()}: read it to the organizer, who sees "
        "the same one when admitting it")
    out(f"then: votechain network install {args.network} --data-dir {args.data_dir} "
        "--certificate FILE")
    return 0


def cmd_network_admit(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    if args.member_key is None:
        return _admit_directory(args)
    key_path: Path = args.member_key
    if args.label is None and key_path.name == files.PUBLIC_KEY_FILE:
        # Every station's `join` writes member.pub: the name says nothing of whose it is.
        raise CliError(f"{key_path} does not say which station it is: give --label "
                       "(or save it as, e.g., town-hall.pub)")
    label = args.label or key_path.name.removesuffix(files.PUBLIC_KEY_SUFFIX)
    cert_path = args.out or files.default_certificate_path(key_path, label)
    with membership_errors():
        network = files.read_network(args.network)
        authority = files.read_authority(args.authority)
        member = files.read_public_key(key_path)
        cert = files.admit_key(network, authority, member, label, cert_path, _revocations(args))
    out(f"admitted {cert.label!r} to network {network.name!r}: "
        f"key fingerprint {fingerprint(cert.member).hex()}")
    out(f"wrote {cert_path}: check the fingerprint with the station, then send it the file "
        "(`votechain network install`)")
    return 0


def _admit_directory(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    if args.out is not None:
        raise CliError("--out goes with --member-key (with --data-dir the certificate "
                       f"is written to DIR/{files.CERTIFICATE_FILE})", code=2)
    # Default label: the directory's own name, resolved so that "." names something.
    label = args.label or Path(args.data_dir).resolve().name
    with membership_errors():
        network = files.read_network(args.network)
        authority = files.read_authority(args.authority)
        cert = files.admit(network, authority, args.data_dir, label, _revocations(args))
    out(f"admitted {cert.label!r} to network {network.name!r}: "
        f"key fingerprint {fingerprint(cert.member).hex()}")
    out(f"wrote {Path(args.data_dir) / files.CERTIFICATE_FILE} and "
        f"{Path(args.data_dir) / files.NETWORK_COPY}")
    return 0


def _revocations(args: argparse.Namespace) -> Revocations | None:
    """The revocation list beside the network file, if there (call inside membership_errors)."""
    from votechain.node import membership_files as files

    revoked_path = files.beside(args.network, files.REVOKED_SUFFIX)
    return files.read_revocations(revoked_path) if revoked_path.exists() else None


def cmd_network_install(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    with membership_errors():
        network = files.read_network(args.network)
        cert = files.install(network, args.data_dir, args.certificate,
                             network_path=args.network)
    out(f"installed {args.data_dir / files.CERTIFICATE_FILE}: {cert.label!r} is a member of "
        f"network {network.name!r}, key fingerprint {fingerprint(cert.member).hex()}")
    out(f"start the peer: votechain peer --network {args.network} --data-dir {args.data_dir} "
        "--tracker HOST:PORT")
    return 0


def cmd_network_revoke(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    with membership_errors():
        network = files.read_network(args.network)
        authority = files.read_authority(args.authority)
        member = files.read_member_key(args.member)
        revoked_path = files.beside(args.network, files.REVOKED_SUFFIX)
        revocations = files.revoke(network, authority, revoked_path, member, args.from_height)
    out(f"revoked key {fingerprint(member).hex()} from height {args.from_height} "
        f"in {revoked_path} (serial {revocations.serial}, "
        f"{len(revocations.revoked)} key{'s' if len(revocations.revoked) != 1 else ''} revoked)")
    out("give that file to every peer: each reads it at its next start "
        f"(beside {Path(args.network).name}, or --revocations)")
    return 0


def add_network_command(sub: argparse._SubParsersAction[_P]) -> None:
    """Add `votechain network` and its steps to `sub`, the top-level subcommands.

    argparse makes every parser below of `sub`'s parser class, so a usage error
    in a step is one line, as everywhere else."""
    about = "a members-only network: create it, join, admit and install members, revoke keys"
    network = sub.add_parser("network", help=about, description=about)
    steps = network.add_subparsers(dest="step", metavar="STEP", required=True)

    def step(name: str, func: Callable[[argparse.Namespace], int],
             help_text: str) -> argparse.ArgumentParser:
        q = steps.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(func=func)
        return q

    def network_and_authority(q: argparse.ArgumentParser) -> None:
        q.add_argument("network", type=Path, metavar="NAME.network", help="the network file")
        q.add_argument("--authority", type=Path, required=True, metavar="NAME.authority",
                       help="the network's secret authority key (the organizer's)")

    q = step("create", cmd_network_create,
             "write NAME.network (public) and NAME.authority (secret, 0600)")
    q.add_argument("name", metavar="NAME", help="the network's name, 1 to 64 characters")
    q.add_argument("--difficulty", type=parse_difficulty, default=4,
                   help="leading zero hex digits of every block hash (default 4)")
    q.add_argument("--seats", type=parse_seats, default=0, metavar="N",
                   help="how many members the network will have: a vote is final once a "
                        "majority of them keep it (default 0: each node counts alone)")
    q.add_argument("--out", type=Path, default=Path("."),
                   help="directory for the two files (default: the current one)")

    q = step("join", cmd_network_join,
             "a station: make its key (if missing) and write member.pub for the organizer")
    q.add_argument("network", type=Path, metavar="NAME.network", help="the network file")
    q.add_argument("--data-dir", type=Path, required=True,
                   help="the station's data directory (created if missing); its private "
                        "key stays there")

    q = step("admit", cmd_network_admit,
             "the organizer: certify a station's public key (--member-key), or a data "
             "directory's key on this machine (--data-dir)")
    network_and_authority(q)
    whose = q.add_mutually_exclusive_group(required=True)
    whose.add_argument("--member-key", type=Path, metavar="FILE.pub",
                       help="the station's public key (its member.pub, from `votechain "
                            "network join`): writes a certificate to send back")
    whose.add_argument("--data-dir", type=Path,
                       help="a data directory on this machine: its key (made if missing) "
                            "gets DIR/member.cert; for one machine and the demo")
    q.add_argument("--label", default=None,
                   help="who the member is, e.g. a polling station (default: the .pub "
                        "file's name, or the directory's name)")
    q.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="with --member-key: where to write the certificate (default: "
                        "LABEL.cert beside the .pub file)")

    q = step("install", cmd_network_install,
             "a station: check the organizer's certificate and make it DIR/member.cert")
    q.add_argument("network", type=Path, metavar="NAME.network", help="the network file")
    q.add_argument("--data-dir", type=Path, required=True,
                   help="the station's data directory (where `join` made its key)")
    q.add_argument("--certificate", type=Path, required=True, metavar="FILE",
                   help="the certificate the organizer sent (`votechain network admit "
                        "--member-key`)")

    q = step("revoke", cmd_network_revoke,
             "revoke a member's key in NAME.revoked, beside the network file")
    network_and_authority(q)
    q.add_argument("--member", type=Path, required=True, metavar="PATH",
                   help="the member: its certificate (.cert), public key (.pub), data "
                        "directory or node_key.pem")
    q.add_argument("--from-height", type=parse_height, default=0, metavar="H",
                   help="its blocks from this height on become invalid (default 0: all)")
