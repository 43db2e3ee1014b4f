"""The certificates behind a node's chain (members-only networks, core/membership.py).

A data directory must prove on its own that every stored block's author was a
member (`votechain verify`, offline), and a peer fetching blocks from us must
be able to check authors it never met. So the node keeps, in its store, the
certificate of every author of a block it stores, admits those certificates
again at start, and hands them out with the blocks it serves. On an open
network (no members) all of it is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from votechain.core.block import Block
from votechain.core.membership import Members
from votechain.errors import BadCertificate
from votechain.node.store import ChainStore

log = logging.getLogger("votechain.peer")


class CertificateKeeper:
    """One node's certificates: in `members` (checked) and in `store` (kept)."""

    def __init__(self, members: Members | None, store: ChainStore) -> None:
        self._members = members
        self._store = store
        # The member keys whose certificate the store holds: a set lookup per
        # appended block is all `keep` costs on the receive path once an
        # author is known.
        self._saved: set[bytes] = self._load()

    def _load(self) -> set[bytes]:
        """Admit the certificates the store kept (a bad one is skipped: the blocks
        it would vouch for then fail at restore)."""
        if self._members is None:
            return set()
        saved = set()
        for raw in self._store.certificates():
            try:
                saved.add(self._members.admit(raw).member)
            except BadCertificate as exc:
                log.warning("ignoring a stored certificate: %s", exc)
        return saved

    def keep(self, blocks: Iterable[Block]) -> None:
        """Store the certificate of each author of `blocks` not stored yet (call
        before the blocks themselves are stored)."""
        if self._members is None:
            return
        new = []
        for block in blocks:
            author = block.author
            if author not in self._saved:
                cert = self._members.certificate(author)
                if cert is not None:
                    new.append((author, cert.encode()))
                    self._saved.add(author)
        if new:
            self._store.save_certificates(new)

    def of(self, batch: Sequence[Block]) -> tuple[bytes, ...]:
        """The certificates of a batch's authors, each once, to send with it."""
        if self._members is None:
            return ()
        authors = dict.fromkeys(b.author for b in batch if b.id > 0)
        certs = (self._members.certificate(author) for author in authors)
        return tuple(cert.encode() for cert in certs if cert is not None)
