"""Members-only networks for in-process tests: an organizer, and an outsider's tools.

- `Organizer`: creates a network (NAME.network and NAME.authority under its
  root, through node/membership_files.py as `votechain network create` does),
  admits data directories, revokes keys, and hands out the `Membership` a
  node starts with (NodeConfig.membership), the way `votechain peer` does.
- `forge_chain`: a chain on the network's genesis at its difficulty, every
  block signed by a key of the caller's choosing: an outsider's (valid proof
  of work, valid signatures, no certificate) or a dishonest member's.
- `ForgedPeer`: a listening peer that serves a given chain to anyone (Latest,
  Blocks with the certificates it chooses) after a handshake under the
  identity it chooses; `sybils` registers a number of them at a tracker, as
  one attacker on one address would, and takes them all down on exit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from blockkit import make_block, tx_for
from votechain.core.block import Block
from votechain.core.keys import NodeKey
from votechain.core.membership import Certificate, Members, Network, Revocations, Revoked
from votechain.core.membership import fingerprint as key_fingerprint
from votechain.errors import ConnectionClosed, RemoteProtocolError
from votechain.net.connection import Connection, LocalIdentity
from votechain.net.sockets import stop_listener
from votechain.net.tracker_client import TrackerClient
from votechain.node import membership_files
from votechain.node.membership_files import Membership
from votechain.protocol.peer import (
    MAX_BATCH_BLOCKS,
    PROTOCOL_VERSION,
    Add,
    AddResult,
    Blocks,
    Error,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
)

LOCAL = "127.0.0.1"


class Organizer:
    """One network's organizer: holds the authority key, admits and revokes."""

    def __init__(self, root: Path, name: str = "testnet", difficulty: int = 3,
                 seats: int = 0) -> None:
        self.root = root
        self.network_path, self.authority_path = membership_files.create_network(
            name, difficulty, root, seats)
        self.network = membership_files.read_network(self.network_path)
        self.authority = membership_files.read_authority(self.authority_path)
        self.revocations: Revocations | None = None

    def admit(self, data_dir: Path, label: str | None = None) -> Membership:
        """Admit `data_dir` (its key made if missing) and load its membership."""
        membership_files.admit(self.network, self.authority, data_dir, label or data_dir.name)
        return self.membership(data_dir)

    def membership(self, data_dir: Path, *, observer: bool = False) -> Membership:
        """What `votechain peer --network NAME.network --data-dir DIR` starts with."""
        return membership_files.load_membership(self.network, data_dir,
                                                network_path=self.network_path,
                                                observer=observer)

    def certify(self, key: NodeKey, label: str) -> Certificate:
        """A certificate for `key` without a data directory (a dishonest member's spare)."""
        return Certificate.issue(self.authority, self.network, key.public_der, label)

    def revoke(self, key: bytes, from_height: int = 0) -> Revocations:
        """Revoke `key` from `from_height`, in NAME.revoked beside the network file."""
        path = membership_files.beside(self.network_path, membership_files.REVOKED_SUFFIX)
        self.revocations = membership_files.revoke(self.network, self.authority, path, key,
                                                   from_height)
        return self.revocations

    def members(self) -> Members:
        """A fresh registry of this network (nothing admitted yet)."""
        return Members(self.network, self.revocations)


def fingerprint(key: bytes) -> str:
    return key_fingerprint(key).hex()[:16]


def forge_chain(network: Network, base: Sequence[Block], labels: Sequence[str],
                key: NodeKey, timestamp: int) -> list[Block]:
    """`base` (a chain from `network`'s genesis) extended by one block per label,
    mined at the network's difficulty and signed by `key`."""
    chain = list(base) if base else [network.genesis]
    for i, label in enumerate(labels):
        chain.append(make_block(chain[-1], tx_for(label, timestamp + i), key=key,
                                difficulty=network.difficulty))
    return chain


def outsider_revocation(network: Network, authority: NodeKey, key: bytes) -> Revocations:
    """A revocation list signed by `authority` (the real one, or a forger's)."""
    return Revocations.issue(authority, network, 1, (Revoked(key_fingerprint(key)),))


class ForgedPeer:
    """Serves `chain` to whoever connects, as `identity` (any key, any certificate
    bytes: an outsider's, a forged one, a dishonest member's). Add is answered
    "known". A context manager; `stop()` closes everything it opened."""

    def __init__(self, network: Network, chain: Sequence[Block], identity: LocalIdentity,
                 certificates: Sequence[bytes] = ()) -> None:
        self.chain = list(chain)
        self._identity = identity
        self._certificates = tuple(certificates)
        self._hello = Hello(PROTOCOL_VERSION, network.id, network.difficulty)
        self._listener = socket.create_server((LOCAL, 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.refusals: list[str] = []  # why honest nodes refused our handshake
        self.polls = 0  # GetLatest requests answered: how often its tip was asked for
        self._thread = threading.Thread(target=self._accept, daemon=True, name="forged-peer")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = Connection(sock, timeout=10.0)
        try:
            conn.handshake(self._hello, initiator=False, timeout=5.0, identity=self._identity)
            while not self._stopping.is_set():
                msg = conn.recv()
                if isinstance(msg, GetLatest):
                    with self._lock:
                        self.polls += 1
                    conn.send(Latest(self.chain[-1]))
                elif isinstance(msg, GetBlocks):
                    batch = self.chain[msg.from_id: msg.from_id + min(msg.limit,
                                                                      MAX_BATCH_BLOCKS)]
                    conn.send(Blocks(tuple(batch), self._certificates))
                elif isinstance(msg, Add):
                    conn.send(AddResult("known"))
                elif isinstance(msg, Error):  # the other side refused our handshake
                    with self._lock:
                        self.refusals.append(msg.reason)
                    return
                else:
                    conn.send(Error("unexpected"))
        except RemoteProtocolError as exc:
            with self._lock:
                self.refusals.append(exc.reason)
        except (ConnectionClosed, OSError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        stop_listener(self._listener, self._thread)  # wakes accept(), joins, closes
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ForgedPeer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def sybils(tracker: tuple[str, int], count: int, network: Network, chain: Sequence[Block],
           identity: LocalIdentity,
           certificates: Sequence[bytes] = ()) -> Iterator[list[ForgedPeer]]:
    """`count` ForgedPeers serving `chain` as `identity`, each registered at
    `tracker` over a connection of its own (the registration lives as long as
    it); all unregistered and stopped on exit."""
    with contextlib.ExitStack() as stack:
        peers = [stack.enter_context(ForgedPeer(network, chain, identity, certificates))
                 for _ in range(count)]
        for peer in peers:
            client = TrackerClient(*tracker, timeout=5.0)
            stack.callback(client.close)
            client.connect()
            client.register(peer.address[1])
        yield peers
