"""The authenticated handshake's decisions, with no I/O: what each side signs,
and who the other side is once its Auth is in (net/connection.py does the I/O).

After the Hellos (protocol/peer.py), each side sends an Auth: its public key,
its member certificate, and its signature of

    SHA-256(msgpack ["votechain handshake", role, network id,
                     the other side's challenge, its own challenge])

where `role` is "initiator" or "acceptor" (the signer's). The other side's
fresh challenge makes every signature good for one connection only (a
recorded Auth cannot be replayed); the role keeps a signature made as one side
from being reflected back as the other's; the network id keeps one network's
handshake from being used on another.

What it proves and what it does not (docs/security.md): the peer held the
private key of the key it presents, at the start of this connection, and the
authority certified that key. The frames after it are not signed or
encrypted: an attacker on the network path between two members can read and
inject them; but it cannot make a block a member did not sign.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from votechain.core import keys
from votechain.core.codec import pack
from votechain.core.membership import Certificate, Members
from votechain.errors import BadCertificate, IncompatiblePeer, MalformedMessage, SignatureError
from votechain.protocol.peer import Auth, Hello

HANDSHAKE_TAG = "votechain handshake"
INITIATOR = "initiator"
ACCEPTOR = "acceptor"


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """What this node proves in its Auth: its key (None: a keyless observer)
    and its encoded certificate (empty: none)."""

    key: keys.NodeKey | None = None
    certificate: bytes = b""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end, once the handshake is done."""

    hello: Hello
    key: bytes | None  # the proven public key; None for a keyless observer
    certificate: Certificate | None  # None on an open network, or for a non-member
    member: bool  # may write (Add) and its tip counts in the majority

    @property
    def label(self) -> str:
        if self.certificate is not None:
            return self.certificate.label
        return "member" if self.member else "observer"


def handshake_digest(role: str, network: bytes, their_challenge: bytes,
                     our_challenge: bytes) -> bytes:
    """What the side playing `role` signs (see the module docstring)."""
    return hashlib.sha256(pack([HANDSHAKE_TAG, role, network, their_challenge,
                                our_challenge])).digest()


def make_auth(identity: LocalIdentity, role: str, ours: Hello, theirs: Hello) -> Auth:
    """Our Auth for this connection: `ours` and `theirs` are the two Hellos."""
    if identity.key is None:
        return Auth()
    digest = handshake_digest(role, ours.genesis, theirs.challenge, ours.challenge)
    return Auth(identity.key.public_der, identity.certificate, identity.key.sign(digest))


def authenticate(auth: Auth, role: str, ours: Hello, theirs: Hello,
                 members: Members | None) -> PeerIdentity:
    """Who sent `auth`, playing `role`; raises IncompatiblePeer (or MalformedMessage)
    saying why we refuse it. `members` None: an open network, where any
    proven key is a member."""
    if not auth.public_key:
        if auth.certificate or auth.signature:
            raise MalformedMessage("auth: a certificate or signature without a public key")
        return PeerIdentity(theirs, None, None, member=False)
    digest = handshake_digest(role, ours.genesis, ours.challenge, theirs.challenge)
    try:
        keys.verify(auth.public_key, auth.signature, digest)
    except SignatureError as exc:
        raise IncompatiblePeer(f"the peer does not hold the key it presented: {exc}") from exc
    if members is None:
        return PeerIdentity(theirs, auth.public_key, None, member=True)
    if not auth.certificate:
        return PeerIdentity(theirs, auth.public_key, None, member=False)
    try:
        cert = members.admit(auth.certificate)
        if cert.member != auth.public_key:
            raise BadCertificate("the certificate is for another key than the one presented")
        members.check_current(auth.public_key)
    except BadCertificate as exc:
        raise IncompatiblePeer(f"certificate refused: {exc}") from exc
    return PeerIdentity(theirs, auth.public_key, cert, member=True)
