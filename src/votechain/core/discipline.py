"""Misbehaviour scores and temporary bans (Bitcoin Core's discouragement), and the
address groups that per-address caps count by. Pure: no sockets, threads or
clocks; the caller passes `now` (seconds on a monotonic clock) and holds a
lock around a `Discipline` if threads share it (node/inbound.py does).

The rules, in plain words:

- Who is scored (`Offender`): a member's key, when the handshake proved one; a
  key is exact (the authority certified it, nobody can make up another), so a
  ban on it touches no one else. Anyone else (an observer, a connection that
  has not finished its handshake) by its address group (`address_group`).
- What scores (`Offence`): invalid data that an honest peer never sends. An
  invalid block offered with Add (`block_offence`: rejected for a rule; a block
  we hold ("known") or one that does not extend our tip ("fork") is not
  misbehaviour, since a branch we have not seen looks the same; nor is a
  timestamp too far in the future, which an honest peer with a skewed clock
  sends), a malformed message, a bad certificate or a key its presenter does
  not hold (`handshake_offence`).
- A score is forgotten once `score_window` seconds pass without an offence, so
  an honest peer's rare accident does not add up over weeks, while a peer that
  keeps sending junk crosses the threshold. Reaching it bans the offender for
  `ban_seconds`; when the ban ends its score starts again from zero.
- Addresses in `never_ban` (loopback by default) are never scored by address:
  every peer on this host shares that address, so a ban on it would lock out
  every one of them (Bitcoin Core disconnects local peers for bad behaviour
  but does not discourage them, for the same reason). Keys are scored
  wherever they connect from.
- Memory is bounded: at most `max_scored` scores and `max_bans` bans are
  kept; past that the entry touched longest ago is forgotten (for bans: the
  one that ends soonest). An attacker who wants a ban forgotten must get that
  many other offenders scored first, from as many addresses or keys.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from votechain.core.membership import fingerprint
from votechain.errors import (
    BadCertificate,
    FrameTooLarge,
    FutureTimestamp,
    IncompatiblePeer,
    MalformedMessage,
    RemoteProtocolError,
    SignatureError,
)

# Why 100: the scale Bitcoin Core used for its misbehaviour score; the points
# below are fractions of it.
BAN_THRESHOLD = 100
# Why 10 minutes: long enough that a peer that keeps sending junk costs us one
# refused connection per address (or one handshake per key) per ten minutes;
# short enough that a member whose bug is fixed, or whose address was shared
# with an offender, is back soon.
BAN_SECONDS = 600.0
# Why an hour: an honest member's occasional bad block (a bug, a restart mid-write)
# is forgotten after an hour of good behaviour; junk sent more often than
# that adds up to a ban, however slowly it comes.
SCORE_WINDOW = 3600.0
# Why 4096 each: an entry is a few dozen bytes, so the table stays under a
# megabyte; forgetting one needs that many other offenders scored since.
MAX_SCORED = 4096
MAX_BANS = 4096
# Loopback: every peer on this host shares it (see the module docstring).
NEVER_BAN: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

# An IPv6 host usually holds a whole /64, so one address of it would be no bound.
IPV6_GROUP_PREFIX = 64


@dataclass(frozen=True, slots=True)
class Offence:
    """A kind of misbehaviour and the points it costs."""

    what: str
    points: int


# Why 10: a block that fails a rule is never sent by an honest member, but one
# with a bug might send a few before its operator notices; ten in a row is no
# accident. Each costs us a hash and a signature check.
INVALID_BLOCK = Offence("invalid block", 10)
# Why 5: the protocol answers a malformed request with an Error and reads on
# (docs/protocol.md), so a buggy client may send a few; twenty is abuse. Eight
# on one connection (NodeConfig.max_bad_requests) already drop it.
MALFORMED_MESSAGE = Offence("malformed message", 5)
# Why 20: a revoked or forged certificate, or a key its presenter cannot sign
# with, is no accident; each costs us a signature check at the handshake.
BAD_CERTIFICATE = Offence("bad certificate", 20)


def address_group(ip: str) -> str:
    """What per-address caps and address bans count by: an IPv4 address itself
    (an IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address's /64
    (::1 itself). Text that is not an address is its own group."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_loopback:  # ::1 alone is this host
            return str(address)
        return str(ipaddress.IPv6Network((address, IPV6_GROUP_PREFIX), strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class Offender:
    """Who a score belongs to: a member key's fingerprint, or an address group."""

    kind: str  # "member" or "address"
    ident: str

    @classmethod
    def member(cls, public_der: bytes) -> Offender:
        return cls("member", fingerprint(public_der).hex())

    @classmethod
    def address(cls, group: str) -> Offender:
        return cls("address", group)

    def __str__(self) -> str:
        ident = self.ident[:16] if self.kind == "member" else self.ident
        return f"{self.kind} {ident}"


def offender(group: str, member_key: bytes | None) -> Offender:
    """The member key when the handshake proved one, else the address group."""
    return Offender.member(member_key) if member_key else Offender.address(group)


@dataclass(frozen=True, slots=True)
class Ban:
    """A ban in force: who, until when (the caller's clock), and what tipped it."""

    who: Offender
    until: float
    last: str


@dataclass(frozen=True, slots=True)
class _Score:
    points: int
    at: float  # the last offence


def block_offence(status: str, reason: str) -> Offence | None:
    """The offence in a block's verdict (NodeState's BlockDecision, or an
    AddResult): only "rejected" is, and not for a timestamp in the future."""
    if status != "rejected" or FutureTimestamp.reason in reason:
        return None
    return INVALID_BLOCK


def handshake_offence(exc: RemoteProtocolError) -> Offence | None:
    """The offence in a failed handshake or a bad frame: garbage or an oversized
    frame, a refused certificate, a key not held. Another network's Hello, a
    refusal of ours, or a deadline missed (a slow link) are none."""
    if isinstance(exc, MalformedMessage | FrameTooLarge):
        return MALFORMED_MESSAGE
    if isinstance(exc, IncompatiblePeer) and isinstance(
        exc.__cause__, BadCertificate | SignatureError
    ):
        return BAD_CERTIFICATE
    return None


class Discipline:
    """The scores and bans of one node (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        threshold: int = BAN_THRESHOLD,
        ban_seconds: float = BAN_SECONDS,
        score_window: float = SCORE_WINDOW,
        max_scored: int = MAX_SCORED,
        max_bans: int = MAX_BANS,
        never_ban: Iterable[str] = NEVER_BAN,
    ) -> None:
        if threshold <= 0 or ban_seconds <= 0 or score_window <= 0:
            raise ValueError("threshold, ban_seconds and score_window must be positive")
        if max_scored < 1 or max_bans < 1:
            raise ValueError("max_scored and max_bans must be at least 1")
        self.threshold = threshold
        self.ban_seconds = ban_seconds
        self._window = score_window
        self._max_scored = max_scored
        self._max_bans = max_bans
        self._never_ban = tuple(ipaddress.ip_network(n, strict=False) for n in never_ban)
        # Least recently touched first, so the first entry is the one to forget.
        self._scores: OrderedDict[Offender, _Score] = OrderedDict()
        # Ending soonest first (every ban lasts ban_seconds from when it began).
        self._bans: OrderedDict[Offender, Ban] = OrderedDict()

    def exempt(self, who: Offender) -> bool:
        """An address in `never_ban`: never scored."""
        if who.kind != "address":
            return False
        try:
            network = ipaddress.ip_network(who.ident, strict=False)
        except ValueError:
            return False
        return any(network.network_address in n and network.broadcast_address in n
                   for n in self._never_ban)

    def misbehaved(self, who: Offender, offence: Offence, now: float) -> Ban | None:
        """Add `offence`'s points to `who`'s score; the ban, if this one began it."""
        if self.exempt(who) or self.banned_until(who, now) is not None:
            return None
        points = offence.points + self._current(self._scores.pop(who, None), now)
        if points < self.threshold:
            self._scores[who] = _Score(points, now)
            while len(self._scores) > self._max_scored:
                self._scores.popitem(last=False)
            return None
        ban = Ban(who, now + self.ban_seconds, offence.what)
        self._bans[who] = ban
        while len(self._bans) > self._max_bans:
            self._bans.popitem(last=False)
        return ban

    def score(self, who: Offender, now: float) -> int:
        """`who`'s points now (0 if unknown, forgotten, or banned: a ban starts it afresh)."""
        return self._current(self._scores.get(who), now)

    def banned_until(self, who: Offender, now: float) -> float | None:
        """When `who`'s ban ends, or None if it is not banned."""
        ban = self._bans.get(who)
        if ban is None:
            return None
        if ban.until <= now:
            del self._bans[who]
            return None
        return ban.until

    def discouraged(self, now: float) -> list[Ban]:
        """The bans in force, ending soonest first."""
        while self._bans:
            first = next(iter(self._bans.values()))
            if first.until > now:
                break
            self._bans.popitem(last=False)
        return [ban for ban in self._bans.values() if ban.until > now]

    def _current(self, score: _Score | None, now: float) -> int:
        if score is None or now - score.at >= self._window:
            return 0
        return score.points
