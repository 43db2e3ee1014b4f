"""A network's files on disk, and what a data directory holds of it.

Beside each other, as the organizer hands them out (core/membership.py says
what each one is):

- NAME.network      public: name, difficulty, authority key, network id (JSON);
- NAME.authority    the authority's private key (PEM, mode 0600): organizer only;
- NAME.revoked      optional: the authority's signed revocation list (JSON).

In a member's (or an observer's) data directory:

- node_key.pem      the node's own key (core/keys.py), mode 0600; it never
                    has to leave the station (`join`, `admit --member-key`,
                    `install`);
- member.pub        its public key (PEM SubjectPublicKeyInfo), written by
                    `votechain network join` for the station to send to the
                    organizer;
- member.cert       its certificate, written by `votechain network install`
                    (or, on one machine, by `votechain network admit --data-dir`);
- network.json      a copy of the network file, so the directory alone is
                    enough to audit its chain offline (`votechain verify`);
- revocations.json  the newest revocation list this node has seen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from votechain.core import keys
from votechain.core.membership import (
    Certificate,
    Members,
    Network,
    Revocations,
    Revoked,
    fingerprint,
)
from votechain.errors import BadCertificate, NotAdmitted, SignatureError

CERTIFICATE_FILE = "member.cert"
PUBLIC_KEY_FILE = "member.pub"
CERTIFICATE_SUFFIX = ".cert"
PUBLIC_KEY_SUFFIX = ".pub"
NETWORK_COPY = "network.json"
REVOCATIONS_COPY = "revocations.json"
NETWORK_SUFFIX = ".network"
AUTHORITY_SUFFIX = ".authority"
REVOKED_SUFFIX = ".revoked"
# A network file, a certificate or a revocation list of 100,000 entries is far
# under this; a bigger file is not one of ours, and is refused before reading.
MAX_FILE_BYTES = 16 * 1024 * 1024


def _read(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BadCertificate(f"{path} is over {MAX_FILE_BYTES} bytes: not a {what}")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadCertificate(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadCertificate(f"the {what} {path} is not text: {exc.reason}") from exc


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically (a temporary file renamed over), created with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def read_network(path: Path) -> Network:
    text = _read(Path(path), "network file")
    with _naming(path):
        return Network.from_json(text)


def read_revocations(path: Path) -> Revocations:
    text = _read(Path(path), "revocation list")
    with _naming(path):
        return Revocations.from_json(text)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A file's BadCertificate names the file (the reader's message does already)."""
    try:
        yield
    except BadCertificate as exc:
        raise BadCertificate(f"{path}: {exc}") from exc


def read_authority(path: Path) -> keys.NodeKey:
    return _read_key(Path(path), "authority key")


def _read_key(path: Path, what: str) -> keys.NodeKey:
    """A private key from a PEM file; BadCertificate (one line) if it is not one."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BadCertificate(f"{path} is over {MAX_FILE_BYTES} bytes: not a {what}")
        return keys.NodeKey.from_pem(path.read_bytes())
    except OSError as exc:
        raise BadCertificate(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    # cryptography raises ValueError, TypeError or UnsupportedAlgorithm for a
    # file that is no RSA PEM key, with a message that is long and says less.
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadCertificate(f"the {what} {path} is not an RSA private key in PEM") from exc


def _node_key(data: Path) -> keys.NodeKey:
    """The data directory's key, created (0600) if missing; BadCertificate if damaged."""
    path = data / keys.KEY_FILE
    return _read_key(path, "node key") if path.exists() else keys.load_or_create(data)


def beside(network_path: Path, suffix: str) -> Path:
    """NAME.network -> NAME<suffix> in the same directory."""
    path = Path(network_path)
    stem = path.name[: -len(NETWORK_SUFFIX)] if path.name.endswith(NETWORK_SUFFIX) else path.name
    return path.with_name(stem + suffix)


def create_network(name: str, difficulty: int, out_dir: Path,
                   seats: int = 0) -> tuple[Path, Path]:
    """Write NAME.network and NAME.authority (0600, never overwritten) in `out_dir`.

    FileExistsError (an OSError) if either file is there already: the
    authority key signs every certificate of its network, so replacing it
    would orphan them all, and a new NAME.network beside it would name a
    network nobody is a member of."""
    if name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        # The name becomes two file names: it must not point elsewhere or hide them.
        raise BadCertificate(f"the network name {name!r} cannot be a file name "
                             "(no '/', no leading '.')")
    out = Path(out_dir)
    network_path = out / f"{name}{NETWORK_SUFFIX}"
    authority_path = out / f"{name}{AUTHORITY_SUFFIX}"
    for path in (authority_path, network_path):
        if path.exists():
            raise FileExistsError(f"{path} exists: refusing to replace network {name!r} "
                                  "(choose another name or --out directory)")
    authority = keys.NodeKey.generate()
    network = Network(name, difficulty, authority.public_der, seats)
    out.mkdir(parents=True, exist_ok=True)
    # O_EXCL: losing an authority key by overwriting it would orphan every certificate.
    fd = os.open(authority_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as secret:
        secret.write(authority.to_pem())
    _write(network_path, network.to_json())
    return network_path, authority_path


def admit(network: Network, authority: keys.NodeKey, data_dir: Path, label: str,
          revocations: Revocations | None = None) -> Certificate:
    """Create the node key in `data_dir` if missing, and write its certificate and
    a copy of the network file there: the one-machine shortcut, where the
    organizer sees the station's private key. A key `revocations` revokes is
    refused: its certificate would be useless, and the organizer should know why."""
    _check_authority(network, authority)
    data = Path(data_dir)
    _check_directory_network(data, network)
    key = _node_key(data)
    _check_not_revoked(network, key.public_der, revocations,
                       f"the key in {data / keys.KEY_FILE} is revoked; to admit this "
                       "station again, move that file away and admit the directory "
                       "again (a new key is made)")
    cert = Certificate.issue(authority, network, key.public_der, label)
    _write(data / CERTIFICATE_FILE, cert.to_json())
    _write(data / NETWORK_COPY, network.to_json())
    return cert


def _check_authority(network: Network, authority: keys.NodeKey) -> None:
    if authority.public_der != network.authority:
        raise BadCertificate("that authority key is not this network's authority")


def _check_not_revoked(network: Network, member: bytes, revocations: Revocations | None,
                       message: str) -> None:
    """BadCertificate(message) if `revocations` (this network's, signed) revokes `member`."""
    if revocations is None:
        return
    Members(network, revocations)  # checks it is this network's, and signed
    if fingerprint(member) in {r.fingerprint for r in revocations.revoked}:
        raise BadCertificate(message)


# ================================================================ the station keeps its key
#
# join (station) -> admit_key (organizer, from member.pub alone) -> install (station).


def public_pem(member: bytes) -> str:
    """A DER public key as PEM SubjectPublicKeyInfo (what member.pub holds)."""
    key = serialization.load_der_public_key(member)
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def read_public_key(path: Path) -> bytes:
    """The DER public key in a PEM SubjectPublicKeyInfo file; BadCertificate
    (one line) if it is none, or not a key a member may hold."""
    path = Path(path)
    text = _read(path, "public key")
    if "PRIVATE KEY-----" in text:
        # Refused before parsing: the point of this flow is that it never travels.
        raise BadCertificate(f"{path} holds a private key: the station must send only its "
                             f"{PUBLIC_KEY_FILE}, from `votechain network join`, and keep "
                             f"{keys.KEY_FILE} to itself")
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise BadCertificate(f"the public key {path} is not a PEM public key "
                             "(-----BEGIN PUBLIC KEY-----)") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadCertificate(f"the public key {path} is not an RSA key")
    member = key.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        keys.public_key(member)  # what the network accepts: RSA, at least 2048 bits
    except SignatureError as exc:
        raise BadCertificate(f"the public key {path}: {exc}") from exc
    return member


def join(network: Network, data_dir: Path) -> tuple[bytes, Path]:
    """The station's side, before admission: create the node key in `data_dir`
    if missing, keep a copy of the network file there, and write the public key
    to DIR/member.pub for the organizer. Returns (the public key, that path).
    A directory that belongs to another network is refused, changing nothing."""
    data = Path(data_dir)
    _check_directory_network(data, network)
    key = _node_key(data)
    if not (data / NETWORK_COPY).exists():
        _write(data / NETWORK_COPY, network.to_json())
    pub_path = data / PUBLIC_KEY_FILE
    _write(pub_path, public_pem(key.public_der))
    return key.public_der, pub_path


def admit_key(network: Network, authority: keys.NodeKey, member: bytes, label: str,
              out: Path, revocations: Revocations | None = None) -> Certificate:
    """The organizer's side: certify the public key `member` (from a station's
    member.pub) and write the certificate to `out`. No data directory, no
    private key: the station's stays on the station. A revoked key is refused;
    so is an `out` that holds another key's certificate (two stations given one
    label), or a file that is no certificate at all."""
    _check_authority(network, authority)
    _check_not_revoked(network, member, revocations,
                       f"the key {fingerprint(member).hex()[:16]}… is revoked; the station "
                       f"must make a new one: move its {keys.KEY_FILE} away and run "
                       "`votechain network join` again")
    out = Path(out)
    if out.exists():
        try:
            existing = read_certificate(out)
        except BadCertificate as exc:
            raise BadCertificate(f"{out} exists and is not a certificate: refusing to "
                                 "replace it (choose --out)") from exc
        if existing.member != member:
            raise BadCertificate(f"{out} holds the certificate of another key "
                                 f"({existing.label!r}): refusing to replace it "
                                 "(choose another --label or --out)")
    cert = Certificate.issue(authority, network, member, label)
    _write(out, cert.to_json())
    return cert


def install(network: Network, data_dir: Path, certificate_path: Path, *,
            network_path: Path | None = None) -> Certificate:
    """The station's side, after admission: check the certificate is this
    network's (its id, the authority's signature), for the directory's own key
    and not revoked, then write it to DIR/member.cert (and the network copy if
    missing). Nothing is written unless every check passed."""
    data = Path(data_dir)
    _check_directory_network(data, network)
    cert = read_certificate(certificate_path)
    key_path = data / keys.KEY_FILE
    if not key_path.exists():
        raise NotAdmitted(f"{data} has no {keys.KEY_FILE}: run `votechain network join` "
                          "there first, and have the organizer certify its member.pub")
    key = _read_key(key_path, "node key")
    if cert.member != key.public_der:
        raise BadCertificate(f"{certificate_path} certifies another key "
                             f"({fingerprint(cert.member).hex()[:16]}…) than {key_path} "
                             f"({fingerprint(key.public_der).hex()[:16]}…): was it made from "
                             f"this directory's {PUBLIC_KEY_FILE}?")
    members = Members(network)
    for revocations in revocation_lists(data, network_path):
        members.revoke(revocations)  # raises if not this network's, or not signed
    with _naming(Path(certificate_path)):
        members.admit(cert)  # this network's id, signed by its authority
        members.check_current(cert.member)  # not revoked
    _write(data / CERTIFICATE_FILE, cert.to_json())
    if not (data / NETWORK_COPY).exists():
        _write(data / NETWORK_COPY, network.to_json())
    return cert


def default_certificate_path(public_key_path: Path, label: str) -> Path:
    """LABEL.cert beside the .pub file, the label made a plain file name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in label).lstrip(".")
    return Path(public_key_path).with_name((safe or "member") + CERTIFICATE_SUFFIX)


def revoke(network: Network, authority: keys.NodeKey, revoked_path: Path,
           member: bytes, from_height: int) -> Revocations:
    """Add `member` (a public key) to the list at `revoked_path` with the next serial."""
    _check_authority(network, authority)
    entries: tuple[Revoked, ...] = ()
    serial = 1
    if Path(revoked_path).exists():
        current = read_revocations(revoked_path)
        Members(network, current)  # checks it is this network's and signed
        entries, serial = current.revoked, current.serial + 1
    entry = Revoked(fingerprint(member), from_height)
    kept = tuple(r for r in entries if r.fingerprint != entry.fingerprint)
    revocations = Revocations.issue(authority, network, serial, (*kept, entry))
    _write(Path(revoked_path), revocations.to_json())
    return revocations


def read_member_key(path: Path) -> bytes:
    """The public key to revoke, from a data directory, its key, its member.pub or
    its member.cert; BadCertificate if none of those is there."""
    path = Path(path)
    if path.is_dir():
        cert_path, key_path = path / CERTIFICATE_FILE, path / keys.KEY_FILE
        if cert_path.exists():
            return read_certificate(cert_path).member
        if key_path.exists():
            return _read_key(key_path, "node key").public_der
        raise BadCertificate(f"{path} holds neither {CERTIFICATE_FILE} nor {keys.KEY_FILE}")
    text = _read(path, "certificate or key")
    if text.lstrip().startswith("-----BEGIN PUBLIC KEY-----"):
        return read_public_key(path)
    if text.lstrip().startswith("-----BEGIN"):
        return _read_key(path, "node key").public_der
    return read_certificate(path).member


def read_certificate(path: Path) -> Certificate:
    text = _read(Path(path), "certificate")
    with _naming(path):
        return Certificate.from_json(text)


def _check_directory_network(data: Path, network: Network) -> None:
    copy = data / NETWORK_COPY
    if copy.exists():
        mine = read_network(copy)
        if mine.id != network.id:
            raise NotAdmitted(f"{data} belongs to network {mine.name!r} "
                              f"({mine.id.hex()[:16]}…), not {network.name!r}; "
                              "use another --data-dir")


def revocation_lists(data: Path, network_path: Path | None) -> list[Revocations]:
    """The lists beside the network file and in the data directory, if there."""
    paths = [beside(network_path, REVOKED_SUFFIX)] if network_path else []
    return [read_revocations(path) for path in [*paths, data / REVOCATIONS_COPY]
            if path.exists()]


@dataclass(frozen=True)
class Membership:
    """What a node of a members-only network starts with."""

    network: Network
    members: Members  # with this node's certificate admitted, the revocations applied
    key: keys.NodeKey  # an observer has one too: it proves nothing but is harmless
    certificate: Certificate | None  # None: an observer


def load_membership(network: Network, data_dir: Path, *, network_path: Path | None = None,
                    revocations: Revocations | None = None,
                    observer: bool = False) -> Membership:
    """Check `data_dir` against `network` before a node starts. A member needs
    its key and a valid, unrevoked certificate for that key and network;
    otherwise NotAdmitted says what to run. The newest revocation list of the
    one given, the one beside the network file and the directory's copy is
    applied.

    Nothing is written until every check passed: a start with the wrong
    network file must not leave that network's copy behind, which would then
    refuse the right one. Afterwards the directory keeps a copy of the network
    file and of the newest revocation list, so it alone is enough to audit."""
    data = Path(data_dir)
    _check_directory_network(data, network)
    lists = [revocations] if revocations is not None else []
    members = Members(network)
    for candidate in lists + revocation_lists(data, network_path):
        members.revoke(candidate)  # raises if not this network's, or not signed
    if observer:
        # An observer's key proves nothing, but the node signs its handshake with one.
        key = _node_key(data)
        _keep_copies(data, members)
        return Membership(network, members, key, None)
    shown = network_path or f"{network.name}{NETWORK_SUFFIX}"
    how = (f"run `votechain network join {shown} --data-dir {data}`, send "
           f"{data / PUBLIC_KEY_FILE} to the organizer and `votechain network install` the "
           f"certificate you get back (or, where the organizer holds the authority key: "
           f"`votechain network admit {shown} --authority "
           f"{beside(Path(shown), AUTHORITY_SUFFIX)} --data-dir {data}`), or start with "
           f"--observer to only read and audit")
    cert_path, key_path = data / CERTIFICATE_FILE, data / keys.KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        raise NotAdmitted(f"{data} is not a member of network {network.name!r}: {how}")
    try:
        key = _read_key(key_path, "node key")
        cert = read_certificate(cert_path)
        if cert.member != key.public_der:
            raise BadCertificate(f"{cert_path} certifies another key than {key_path}")
        members.admit(cert)
    except BadCertificate as exc:
        raise NotAdmitted(f"{data} is not a member of network {network.name!r} "
                          f"({exc}): {how}") from exc
    try:
        members.check_current(key.public_der)
    except BadCertificate as exc:
        # Admitted but revoked: a new certificate for this key would be revoked
        # too, so the way back is a new key.
        raise NotAdmitted(f"{data} may not write to network {network.name!r} ({exc}): the "
                          f"organizer must admit a new key: move {key_path} and {cert_path} "
                          "away, then `votechain network join` again (or admit the directory "
                          "again); or start with --observer to only read and audit") from exc
    _keep_copies(data, members)
    return Membership(network, members, key, cert)


def _keep_copies(data: Path, members: Members) -> None:
    data.mkdir(mode=0o700, parents=True, exist_ok=True)  # a data directory is private
    if not (data / NETWORK_COPY).exists():
        _write(data / NETWORK_COPY, members.network.to_json())
    if members.revocations is not None:
        _write(data / REVOCATIONS_COPY, members.revocations.to_json())
