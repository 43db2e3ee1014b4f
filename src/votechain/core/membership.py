"""Members-only networks: the network, its authority, member certificates,
revocations, and the registry a node checks block authors against. Pure: bytes
and values in, values out (RSA through core/keys.py); files are the app's.

The trust model (docs/security.md has the whole of it):

- A network is a name, a difficulty and an **authority key** (RSA-2048, held
  by the organizer, never by a peer). Its genesis block's data is the
  `descriptor` below, so the genesis hash (the network id) commits to all
  three, and the handshake, which compares genesis hashes, never mixes two
  networks.
- The authority **admits** a member by signing a `Certificate` over the
  network id, the member's public key and a label (a polling station, say).
  Anyone holding the network file checks a certificate offline.
- A block is valid only if its author holds a valid, unrevoked certificate
  for the network (`Members.check_author`): outsiders cannot write, whatever
  proof of work they spend.
- The authority **revokes** a compromised key with a signed `Revocations`
  list: each entry names a key (by its SHA-256 fingerprint) and the height
  from which its blocks are invalid (0: all of them). A list with a higher
  serial replaces a lower one; nodes read it at start, beside the network file.

Every signed object signs SHA-256 of a msgpack array that starts with a
domain string, so a signature made for one purpose (a certificate, a
revocation list, a handshake, a block hash) is never valid for another.
docs/protocol.md gives each encoding byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from votechain.core import keys
from votechain.core.block import (
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_SIGNATURE_BYTES,
    Block,
    genesis_block,
)
from votechain.core.codec import Codec, Limits, pack
from votechain.errors import BadCertificate, NotAMember, SignatureError

DESCRIPTOR_TAG = "votechain network"
CERTIFICATE_TAG = "votechain certificate"
REVOCATIONS_TAG = "votechain revocations"
NETWORK_FORMAT = "votechain-network/1"
CERTIFICATE_FORMAT = "votechain-certificate/1"
REVOCATIONS_FORMAT = "votechain-revocations/1"
# A name and a label are for humans (file names, logs, `status`); 64
# characters is plenty and keeps the genesis block and a certificate small.
MAX_NAME_CHARS = 64
MAX_LABEL_CHARS = 64
# Revocations travel as a file, not on the wire; the cap only bounds what a
# damaged file can make a node allocate.
MAX_REVOKED = 100_000
FINGERPRINT_BYTES = 32
# Seats bound the member count a node's finality counts over (core/finality.py):
# far more than any polling network, and small enough that no count overflows.
MAX_SEATS = 10_000

# A certificate on the wire is a 4-element array: its id, key, label and
# signature; nothing in it can be longer than a block field.
_CERT_LIMITS = Limits(max_str_len=4 * MAX_LABEL_CHARS, max_bin_len=MAX_AUTHOR_BYTES,
                      max_array_len=4, max_map_len=0)
_CODEC = Codec(_CERT_LIMITS, BadCertificate)


def fingerprint(public_der: bytes) -> bytes:
    """A key's short name: SHA-256 of its DER encoding."""
    return hashlib.sha256(public_der).digest()


def _signed_digest(*fields: object) -> bytes:
    return hashlib.sha256(pack(list(fields))).digest()


def _check_text(text: object, what: str, max_chars: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadCertificate(f"{what} must be non-empty text")
    if len(text) > max_chars or any(not ch.isprintable() for ch in text):
        raise BadCertificate(f"{what} must be at most {max_chars} printable characters")
    return text


def _hex(obj: dict[str, Any], name: str, what: str) -> bytes:
    value = obj.get(name)
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def _json(text: str, fmt: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BadCertificate(f"{what} is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise BadCertificate(f"{what} is not a {fmt} file")
    return obj


# ================================================================ the network


@dataclass(frozen=True)
class Network:
    """What every peer and auditor of one network shares: the public part."""

    name: str
    difficulty: int
    authority: bytes  # the authority's RSA public key, DER SubjectPublicKeyInfo
    # How many members the network has: a vote is final once a majority of
    # them keep it (core/finality.py), and that majority must be the same
    # number on every node, so the genesis block commits to it. 0 (a network
    # made before seats existed): finality counts each node alone.
    seats: int = 0
    genesis: Block = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from votechain.core.rules import check_difficulty  # rules imports this module

        _check_text(self.name, "the network name", MAX_NAME_CHARS)
        check_difficulty(self.difficulty)
        if (not isinstance(self.seats, int) or isinstance(self.seats, bool)
                or not 0 <= self.seats <= MAX_SEATS):
            raise BadCertificate(f"the network's seats must be an integer in 0..{MAX_SEATS}")
        try:
            keys.public_key(self.authority)
        except SignatureError as exc:
            raise BadCertificate(f"the authority key: {exc}") from exc
        object.__setattr__(self, "genesis", genesis_block(self.descriptor()))

    def descriptor(self) -> bytes:
        """The genesis block's data: what the network id commits to (the seats
        only when set, so a network made before them keeps its id)."""
        fields: list[object] = [DESCRIPTOR_TAG, self.name, self.difficulty, self.authority]
        if self.seats:
            fields.append(self.seats)
        return pack(fields)

    @property
    def id(self) -> bytes:
        """The network id: its genesis block's hash."""
        return self.genesis.hash

    def to_json(self) -> str:
        obj: dict[str, object] = {"format": NETWORK_FORMAT, "name": self.name,
                                  "difficulty": self.difficulty,
                                  "authority": self.authority.hex()}
        if self.seats:
            obj["seats"] = self.seats
        obj["id"] = self.id.hex()
        return json.dumps(obj, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Network:
        obj = _json(text, NETWORK_FORMAT, "the network file")
        difficulty = obj.get("difficulty")
        if not isinstance(difficulty, int) or isinstance(difficulty, bool):
            raise BadCertificate("the network file's difficulty must be an integer")
        seats = obj.get("seats", 0)
        if not isinstance(seats, int) or isinstance(seats, bool):
            raise BadCertificate("the network file's seats must be an integer")
        try:
            network = cls(obj.get("name"), difficulty, _hex(obj, "authority", "network"),  # type: ignore[arg-type]
                          seats)
        except (TypeError, ValueError) as exc:
            raise BadCertificate(f"the network file: {exc}") from exc
        if obj.get("id") != network.id.hex():
            raise BadCertificate("the network file's id does not match its name, difficulty, "
                                 "authority and seats (edited?)")
        return network


# ================================================================ certificates


@dataclass(frozen=True)
class Certificate:
    """The authority's statement "`member` is a member of `network`, as `label`"."""

    network: bytes  # the network id (its genesis hash)
    member: bytes  # the member's RSA public key, DER
    label: str
    signature: bytes  # the authority's, over `signed_digest()`

    def signed_digest(self) -> bytes:
        return _signed_digest(CERTIFICATE_TAG, self.network, self.member, self.label)

    @classmethod
    def issue(cls, authority: keys.NodeKey, network: Network, member: bytes,
              label: str) -> Certificate:
        _check_text(label, "the label", MAX_LABEL_CHARS)
        unsigned = cls(network.id, member, label, b"")
        return cls(network.id, member, label, authority.sign(unsigned.signed_digest()))

    def encode(self) -> bytes:
        """The wire form: msgpack [network, member, label, signature]."""
        return pack([self.network, self.member, self.label, self.signature])

    @classmethod
    def decode(cls, raw: bytes) -> Certificate:
        items = _CODEC.unpack(raw)
        if not isinstance(items, list) or len(items) != 4:
            raise BadCertificate("a certificate must be an array of 4 fields")
        return cls(
            network=_CODEC.binary(items[0], "certificate.network", HASH_BYTES, exact=True),
            member=_CODEC.binary(items[1], "certificate.member", MAX_AUTHOR_BYTES),
            label=_CODEC.text(items[2], "certificate.label", MAX_LABEL_CHARS),
            signature=_CODEC.binary(items[3], "certificate.signature", MAX_SIGNATURE_BYTES),
        )

    def to_json(self) -> str:
        return json.dumps({"format": CERTIFICATE_FORMAT, "network": self.network.hex(),
                           "member": self.member.hex(), "label": self.label,
                           "signature": self.signature.hex()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        obj = _json(text, CERTIFICATE_FORMAT, "the certificate file")
        label = obj.get("label")
        if not isinstance(label, str):
            raise BadCertificate("the certificate file's label must be text")
        return cls(_hex(obj, "network", "certificate"), _hex(obj, "member", "certificate"),
                   label, _hex(obj, "signature", "certificate"))


# ================================================================ revocations


@dataclass(frozen=True, slots=True, order=True)
class Revoked:
    """Blocks by the key with this fingerprint are invalid from `from_height` on."""

    fingerprint: bytes
    from_height: int = 0


@dataclass(frozen=True)
class Revocations:
    """The authority's signed list of revoked keys; a higher serial replaces a lower."""

    network: bytes
    serial: int
    revoked: tuple[Revoked, ...]
    signature: bytes

    def signed_digest(self) -> bytes:
        entries = [[r.fingerprint, r.from_height] for r in self.revoked]
        return _signed_digest(REVOCATIONS_TAG, self.network, self.serial, entries)

    @classmethod
    def issue(cls, authority: keys.NodeKey, network: Network, serial: int,
              revoked: tuple[Revoked, ...]) -> Revocations:
        unsigned = cls(network.id, serial, tuple(sorted(set(revoked))), b"")
        return cls(unsigned.network, serial, unsigned.revoked,
                   authority.sign(unsigned.signed_digest()))

    def to_json(self) -> str:
        return json.dumps({"format": REVOCATIONS_FORMAT, "network": self.network.hex(),
                           "serial": self.serial,
                           "revoked": [{"fingerprint": r.fingerprint.hex(),
                                        "from_height": r.from_height} for r in self.revoked],
                           "signature": self.signature.hex()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Revocations:
        obj = _json(text, REVOCATIONS_FORMAT, "the revocation list")
        serial, entries = obj.get("serial"), obj.get("revoked")
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise BadCertificate("the revocation list's serial must be a natural number")
        if not isinstance(entries, list) or len(entries) > MAX_REVOKED:
            raise BadCertificate(f"the revocation list must list at most {MAX_REVOKED} keys")
        revoked = []
        for entry in entries:
            height = entry.get("from_height") if isinstance(entry, dict) else None
            digest = _hex(entry, "fingerprint", "revocation") if isinstance(entry, dict) else b""
            if len(digest) != FINGERPRINT_BYTES or not isinstance(height, int) or height < 0:
                raise BadCertificate("a revocation entry needs a 32-byte fingerprint and a "
                                     "from_height >= 0")
            revoked.append(Revoked(digest, height))
        return cls(_hex(obj, "network", "revocations"), serial, tuple(revoked),
                   _hex(obj, "signature", "revocations"))


# ================================================================ the registry


class Members:
    """The certificates a node has checked, by member key, and the rule "only
    members write". Each certificate's authority signature is verified once,
    when `admit`ted; `check_author` is then a dict lookup, so the receive path
    keeps its speed (the cache is per key, and only the authority can make a
    valid certificate, so it grows only with real admissions).

    Safe to read from many threads while one admits: each admission is one
    dict assignment of a value checked before it."""

    def __init__(self, network: Network, revocations: Revocations | None = None) -> None:
        self.network = network
        self._by_key: dict[bytes, Certificate] = {}
        self._revoked: dict[bytes, int] = {}
        # The revocation height of each admitted key that is revoked, by key:
        # `check_author` runs on every block received, and looking it up by
        # key spares it a SHA-256 of the author per block.
        self._revoked_from: dict[bytes, int] = {}
        self.revocations: Revocations | None = None
        if revocations is not None:
            self.revoke(revocations)

    def revoke(self, revocations: Revocations) -> None:
        """Adopt `revocations` (signature checked) unless an equal or newer list is in use."""
        if revocations.network != self.network.id:
            raise BadCertificate("the revocation list is for another network")
        try:
            keys.verify(self.network.authority, revocations.signature,
                        revocations.signed_digest())
        except SignatureError as exc:
            raise BadCertificate("the revocation list is not signed by this network's "
                                 "authority") from exc
        if self.revocations is not None and revocations.serial <= self.revocations.serial:
            return
        self.revocations = revocations
        self._revoked = {r.fingerprint: r.from_height for r in revocations.revoked}
        self._revoked_from = {key: self._revoked[fingerprint(key)] for key in self._by_key
                              if fingerprint(key) in self._revoked}

    def admit(self, certificate: Certificate | bytes) -> Certificate:
        """Check a certificate (decoding it first if given as bytes) and remember
        its key; BadCertificate says why one is refused."""
        cert = Certificate.decode(certificate) if isinstance(certificate, bytes) else certificate
        known = self._by_key.get(cert.member)
        if known == cert:
            return known
        if cert.network != self.network.id:
            raise BadCertificate("the certificate is for another network "
                                 f"({cert.network.hex()[:16]}…, this is "
                                 f"{self.network.id.hex()[:16]}… {self.network.name!r})")
        try:
            keys.verify(self.network.authority, cert.signature, cert.signed_digest())
        except SignatureError as exc:
            raise BadCertificate("the certificate is not signed by this network's "
                                 "authority") from exc
        try:
            keys.public_key(cert.member)
        except SignatureError as exc:
            raise BadCertificate(f"the certified key: {exc}") from exc
        # A revoked key's certificate is still admitted: its blocks below the
        # revocation height stay valid (check_author); it just is no member now.
        height = self._revoked.get(fingerprint(cert.member))
        if height is not None:
            self._revoked_from[cert.member] = height
        self._by_key[cert.member] = cert
        return cert

    def check_current(self, key: bytes) -> Certificate:
        """The certificate of `key` if it is a member now (admitted, not revoked);
        BadCertificate says why not. For the handshake and a node's start."""
        cert = self._by_key.get(key)
        if cert is None:
            raise BadCertificate(f"no certificate of network {self.network.name!r} for key "
                                 f"{fingerprint(key).hex()[:16]}…")
        height = self._revoked.get(fingerprint(key))
        if height is not None:
            raise BadCertificate(f"the member key {fingerprint(key).hex()[:16]}… "
                                 f"({cert.label!r}) is revoked from height {height}")
        return cert

    def is_member(self, key: bytes) -> bool:
        """Whether `key` holds an admitted certificate and is not revoked at all."""
        return key in self._by_key and fingerprint(key) not in self._revoked

    def certificate(self, key: bytes) -> Certificate | None:
        return self._by_key.get(key)

    def certificates(self) -> list[Certificate]:
        return list(self._by_key.values())

    def label(self, key: bytes) -> str:
        cert = self._by_key.get(key)
        return cert.label if cert is not None else "?"

    def check_author(self, block: Block) -> None:
        """Rule 6 (docs/protocol.md): the block's author is a member at its height."""
        if block.author not in self._by_key:
            raise NotAMember(block, f"no certificate of this network for key "
                                    f"{fingerprint(block.author).hex()[:16]}…")
        height = self._revoked_from.get(block.author)
        if height is not None and block.id >= height:
            raise NotAMember(block, f"its author's key is revoked from height {height}")
