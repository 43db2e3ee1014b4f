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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from votechain.errors import SignatureError

KEY_BITS = 2048
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
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS))

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
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start (not chmod afterwards) so the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.to_pem())
    return key


@functools.lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def public_key(der: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as exc:
        raise SignatureError(f"author is not a valid DER public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("author key is not RSA")
    if key.key_size < KEY_BITS:
        raise SignatureError(f"author key is {key.key_size} bits, below {KEY_BITS}")
    return key


def verify(author_der: bytes, signature: bytes, block_hash: bytes) -> None:
    """Raise SignatureError unless `signature` is `author_der`'s signature of `block_hash`."""
    key = public_key(author_der)
    try:
        key.verify(signature, block_hash, _PADDING, _HASH)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify under the block's author key") from exc
