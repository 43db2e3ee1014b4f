"""RSA-2048 node keys: generate once, keep as PEM (mode 0600), sign and verify block hashes.

The signature is RSASSA-PKCS1-v1_5 with SHA-256 over the 32-byte block hash.
PKCS#1 v1.5 rather than PSS because it is deterministic: the same key and
block always give the same signature, which keeps the test vectors fixed and
lets two honest nodes agree byte for byte on a stored chain.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from votechain.errors import SignatureError

KEY_BITS = 2048
# The one public exponent a key may have (docs/protocol.md section 5.1). A
# verification costs one modular exponentiation by e: 17 multiplications for
# 65537, but a 2048-bit e would make every block from that author cost as much
# as signing. And e = 3 is what lax PKCS#1 v1.5 verifiers let forgers exploit
# (Bleichenbacher, 2006); one fixed value keeps every implementation safe.
PUBLIC_EXPONENT = 65537
KEY_FILE = "node_key.pem"
# Parsing a DER public key costs about a third of a verification; the receive
# path sees the same few authors over and over, so keep the parsed keys.
PUBLIC_KEY_CACHE_SIZE = 4096

_PADDING = padding.PKCS1v15()
_HASH = hashes.SHA256()


class NodeKey:
    """A node's private key and the DER public key that goes into every block it signs."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._private = private_key
        self.public_der: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS))

    @classmethod
    def from_pem(cls, pem: bytes) -> NodeKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the node key must be an RSA private key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, block_hash: bytes) -> bytes:
        return self._private.sign(block_hash, _PADDING, _HASH)


def load_or_create(data_dir: Path) -> NodeKey:
    """The node's key from `data_dir`, generated and saved (mode 0600) on first start."""
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        return NodeKey.from_pem(path.read_bytes())
    key = NodeKey.generate()
    # 0700: the data directory holds this key, the control socket and cookie
    # (node/datadir.py makes an existing looser one private at node start).
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 from the start (not chmod afterwards) so the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.to_pem())
    return key


@functools.lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def public_key(der: bytes) -> rsa.RSAPublicKey:
    """The RSA key `der` (SubjectPublicKeyInfo) holds, if votechain accepts it: at
    least KEY_BITS bits, exponent PUBLIC_EXPONENT. Every key goes through here: a
    block's author, a handshake's key, a certificate's member key, the network's
    authority. SignatureError says what is wrong (a refused key is not cached)."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"the key is not a valid DER public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("the key is not RSA")
    if key.key_size < KEY_BITS:
        raise SignatureError(f"the key is {key.key_size} bits, below {KEY_BITS}")
    exponent = key.public_numbers().e
    if exponent != PUBLIC_EXPONENT:
        raise SignatureError(f"the key's public exponent is {exponent}, "
                             f"not {PUBLIC_EXPONENT}")
    return key


def verify(author_der: bytes, signature: bytes, block_hash: bytes) -> None:
    """Raise SignatureError unless `signature` is `author_der`'s signature of `block_hash`."""
    key = public_key(author_der)
    try:
        key.verify(signature, block_hash, _PADDING, _HASH)
    except InvalidSignature as exc:
        raise SignatureError("the signature does not verify under that key") from exc
