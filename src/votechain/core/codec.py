"""Strict msgpack: the one decoder and the one set of field checks behind every
encoding votechain reads (stored blocks, peer messages, control requests and replies).

Pure: bytes and values in, values out. Each user builds one `Codec` from its
own named `Limits` and the error class that says whose fault a refusal is
(`EncodingError` for a block, `MalformedMessage` for a peer's frame,
`ControlProtocolError` for a control client's request...), then decodes with
`unpack` and checks every field with `fields`, `uint`, `binary`, `text` and
`number`. What is refused, everywhere alike:

- anything that is not exactly one msgpack object (trailing bytes, truncation,
  the never-used byte 0xc1, invalid UTF-8 in a str);
- a declared length over the codec's limits, before anything is allocated;
- ext types (msgpack's Timestamp included) and map keys that are not str;
- a map with a missing or an unknown field; a value of the wrong type (an
  integer must be an int, not a float or a bool; bytes must be bin, text must
  be str); a value over its cap.

Why here, in core, and not in protocol: `block.py` decodes stored blocks with
it, and core may not import the layers above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from votechain.errors import BadInput

# msgpack's integer range, and so the range of every integer field: ids,
# timestamps and nonces are never negative.
MAX_UINT = 2**64 - 1

# Error messages quote the sender's keys and tags; keep a quote short, so a
# 2000-character key does not become a 2000-character log line.
MAX_QUOTED_CHARS = 40


def pack(obj: object) -> bytes:
    """The canonical encoding: bin for bytes, str for text (msgpack's use_bin_type)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Limits:
    """The most any declared length may say, handed to msgpack so that it refuses
    an oversized length from the header alone, before allocating anything. Each
    user names its own and writes down why (block.py, protocol/peer.py,
    protocol/control.py)."""

    max_str_len: int  # bytes of UTF-8 in one str (map keys included)
    max_bin_len: int  # bytes in one bin
    max_array_len: int  # elements in one array
    max_map_len: int  # entries in one map


class Codec:
    """One strict decoder: `limits` on what msgpack may allocate, and `error`, the
    class every refusal raises (so a refusal always says whose fault it is)."""

    __slots__ = ("_options", "error", "limits")

    def __init__(self, limits: Limits, error: type[BadInput]) -> None:
        self.limits = limits
        self.error = error
        self._options: dict[str, Any] = {
            "raw": False,
            "strict_map_key": True,
            "max_str_len": limits.max_str_len,
            "max_bin_len": limits.max_bin_len,
            "max_array_len": limits.max_array_len,
            "max_map_len": limits.max_map_len,
            "max_ext_len": 0,  # no ext types (not even Timestamp) anywhere in votechain
        }

    def fail(self, message: str) -> NoReturn:
        raise self.error(message)

    def unpack(self, raw: bytes) -> object:
        """Exactly one msgpack object.

        msgpack's C decoder has a fixed nesting stack of 1024 (StackError, a
        ValueError); the pure-Python fallback may recurse, hence RecursionError.
        `msgpack.unpackb` is looked up at each call, so tests can swap in the
        pure-Python twin and check that both fail the same named way.
        """
        try:
            return msgpack.unpackb(raw, **self._options)
        except msgpack.ExtraData as exc:
            raise self.error("trailing bytes after the msgpack object") from exc
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            raise self.error(f"malformed msgpack: {type(exc).__name__}: {exc}"[:200]) from exc
        except RecursionError as exc:
            raise self.error("msgpack nested too deeply") from exc

    # ------------------------------------------------------------ field checks

    def fields(
        self, obj: object, what: str, names: tuple[str, ...], *, tagged: bool = False
    ) -> dict[str, Any]:
        """`obj` as a map with exactly the keys `names`; with `tagged`, also the key
        "type" holding `what` (a message's tag)."""
        if not isinstance(obj, dict):
            self.fail(f"{what} must be a map, got {type(obj).__name__}")
        # Every received block and message comes through here: one C-level set
        # comparison answers the common case; the rest only words the error.
        keyset = (_TAGGED if tagged else _PLAIN).get(names) or _keyset(names, tagged)
        if obj.keys() == keyset:
            if tagged and obj["type"] != what:
                self.fail(f"{what} map has type {quote(obj['type'])}")
            return obj
        if tagged and obj.get("type") != what:
            self.fail(f"{what} map has type {quote(obj.get('type'))}")
        missing = [name for name in names if name not in obj]
        if missing:
            self.fail(f"{what} is missing {', '.join(missing)}")
        extra = sorted(quote(key, bare=True) for key in obj if key not in keyset)
        self.fail(f"{what} has unknown fields {', '.join(extra[:4])}")

    # The scalar checks test `type(value) is ...`, not isinstance: msgpack
    # builds exact ints, bytes and strs, one test refuses a bool for an int, and
    # the receive path runs these ten times per block.

    def uint(self, value: object, where: str, maximum: int = MAX_UINT) -> int:
        if type(value) is not int:
            self.fail(f"{where} must be an integer, got {type(value).__name__}")
        if not 0 <= value <= maximum:
            self.fail(f"{where}={value} is out of range 0..{maximum}")
        return value

    def binary(self, value: object, where: str, limit: int, *, exact: bool = False) -> bytes:
        if type(value) is not bytes:
            self.fail(f"{where} must be bytes, got {type(value).__name__}")
        if exact and len(value) != limit:
            self.fail(f"{where} must be {limit} bytes, got {len(value)}")
        if len(value) > limit:
            self.fail(f"{where} is {len(value)} bytes, over its cap of {limit}")
        return value

    def text(self, value: object, where: str, max_chars: int) -> str:
        if type(value) is not str:
            self.fail(f"{where} must be a string, got {type(value).__name__}")
        if len(value) > max_chars:
            self.fail(f"{where} is {len(value)} characters, over {max_chars}")
        return value

    def number(self, value: object, where: str) -> float:
        """An int or a float (not a bool); the caller checks the range (NaN fails any)."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(f"{where} must be a number, got {type(value).__name__}")
        return float(value)


# The key set each `fields` call expects, by its `names` (a dict lookup is
# cheaper than building the set, or a cache key, on every call).
_PLAIN: dict[tuple[str, ...], frozenset[str]] = {}
_TAGGED: dict[tuple[str, ...], frozenset[str]] = {}


def _keyset(names: tuple[str, ...], tagged: bool) -> frozenset[str]:
    keyset = frozenset((*names, "type") if tagged else names)
    (_TAGGED if tagged else _PLAIN)[names] = keyset
    return keyset


def quote(value: object, *, bare: bool = False) -> str:
    """A sender-supplied value for an error message: repr, cut short. With `bare`,
    a short identifier is shown as it is (a field name in a list of them)."""
    if bare and isinstance(value, str) and value.isidentifier() and len(value) <= MAX_QUOTED_CHARS:
        return value
    text = repr(value)
    if len(text) > MAX_QUOTED_CHARS:
        text = text[: MAX_QUOTED_CHARS - 1] + "…"
    return text
