"""Resume tokens and history cursors: compact, signed position vectors bound to one filter.

A token carries, for each topic of the filter (in the filter's sorted topic order), the next offset
to read in every partition. It is base64url of `kind | varints | mac`, where the MAC is an HMAC-SHA256
(truncated to 12 bytes) over the kind, the filter's scope hash and the varints. So a token only
works with the filter it was issued for, cannot name topics outside that filter, and cannot be
edited; and any edge process sharing `stream_token_secret` can resume it exactly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from streams.errors import LimitExceeded, StreamError

STREAM = 1   # Last-Event-ID: one offset per partition
HISTORY = 2  # history cursor: (next offset, end bound) per partition
MAC_BYTES = 12
MAX_TOKEN_CHARS = 4096
# The varint body that fits MAX_TOKEN_CHARS of unpadded base64url, beside the kind byte and the MAC.
MAX_BODY_BYTES = MAX_TOKEN_CHARS * 6 // 8 - 1 - MAC_BYTES
OFFSET_BYTES = 9  # the longest varint of a Kafka offset (an int64): tokens are bounded for any offset
VALUES = {STREAM: 1, HISTORY: 2}  # integers per partition in each kind of token


class TokenError(StreamError, ValueError):
    """A token is malformed, forged, or was issued for another filter or kind."""

    status = 400
    title = "Invalid token"


def _varint(value: int, out: bytearray) -> None:
    if value < 0:
        raise ValueError(f"offsets are never negative, got {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise TokenError("token is truncated")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def varint_size(value: int) -> int:
    """Return how many bytes `value` takes as a varint."""
    return max(1, (value.bit_length() + 6) // 7)


def worst_case_bytes(kind: int, partitions: Sequence[int]) -> int:
    """Return the largest body a token of `kind` can have for topics of these partition counts."""
    per = VALUES[kind]
    return sum(varint_size(n * per) + n * per * OFFSET_BYTES for n in partitions)


def max_partitions(kind: int) -> int:
    """Return how many partitions of one topic a token of `kind` can always hold."""
    n = 0
    while worst_case_bytes(kind, [n + 1]) <= MAX_BODY_BYTES:
        n += 1
    return n


def check_room(kind: int, layout: dict[str, int]) -> None:
    """Refuse (400, naming the limit) a filter whose partitions would not fit a token of `kind` at every offset."""
    if worst_case_bytes(kind, list(layout.values())) <= MAX_BODY_BYTES:
        return
    what = "resume token (Last-Event-ID)" if kind == STREAM else "history cursor"
    raise LimitExceeded(f"the filter covers {sum(layout.values())} partitions in {len(layout)} topics; a {what} "
                        f"holds at most {max_partitions(kind)} partitions of one topic (tokens are limited to "
                        f"{MAX_TOKEN_CHARS} characters): name fewer or smaller topics", field="filter")


def pack(groups: Sequence[Sequence[int]]) -> bytes:
    """Return the varint body for a list of integer lists (each prefixed by its length)."""
    out = bytearray()
    for group in groups:
        _varint(len(group), out)
        for value in group:
            _varint(value, out)
    return bytes(out)


class TokenCodec:
    """Sign and verify position vectors with one secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 8:
            raise ValueError(f"token secret must be at least 8 bytes, got {len(secret)}")
        self._key = hashlib.sha256(secret).digest()

    def _mac(self, kind: int, scope: bytes, body: bytes) -> bytes:
        return hmac.digest(self._key, bytes((kind,)) + scope + body, "sha256")[:MAC_BYTES]

    def sign(self, kind: int, scope: bytes, body: bytes) -> bytes:
        """Return the ASCII token for an already packed body (the fan-out's hot path)."""
        raw = bytes((kind,)) + body + self._mac(kind, scope, body)
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    def encode(self, kind: int, scope: bytes, groups: Sequence[Sequence[int]]) -> str:
        """Return the token for `groups` (one integer list per topic) bound to `scope`."""
        return self.sign(kind, scope, pack(groups)).decode()

    def decode(self, token: str, kind: int, scope: bytes) -> list[list[int]]:
        """Verify a token for `kind` and `scope` and return its groups, raising TokenError."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("token is empty or too long")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("token is not base64url") from None
        if len(raw) < 1 + MAC_BYTES:
            raise TokenError("token is too short")
        body, mac = raw[1:-MAC_BYTES], raw[-MAC_BYTES:]
        if raw[0] != kind:
            raise TokenError("token is of another kind (a history cursor is not a Last-Event-ID, and back)")
        if not hmac.compare_digest(mac, self._mac(kind, scope, body)):
            raise TokenError("token signature does not match this filter (forged, edited, or issued "
                             "for another filter or secret)")
        groups: list[list[int]] = []
        pos = 0
        while pos < len(body):
            count, pos = _read_varint(body, pos)
            group = []
            for _ in range(count):
                value, pos = _read_varint(body, pos)
                group.append(value)
            groups.append(group)
        return groups
