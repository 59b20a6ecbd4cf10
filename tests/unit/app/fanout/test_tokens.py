"""Resume tokens: round trip, compactness, and refusal of anything not issued for this filter."""

from __future__ import annotations

import base64

import pytest

from app.fanout.tokens import HISTORY, STREAM, TokenCodec, TokenError

SCOPE = b"s" * 16
POSITIONS = [[0, 127, 128, 2**40], [5]]


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(b"test-secret-0123456789")


def test_token_round_trips_positions(codec: TokenCodec) -> None:
    assert codec.decode(codec.encode(STREAM, SCOPE, POSITIONS), STREAM, SCOPE) == POSITIONS


def test_token_is_url_safe_and_compact(codec: TokenCodec) -> None:
    token = codec.encode(STREAM, SCOPE, [[1000, 2000, 3000]])
    assert len(token) <= 30
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_token_for_another_filter_is_refused(codec: TokenCodec) -> None:
    token = codec.encode(STREAM, SCOPE, POSITIONS)
    with pytest.raises(TokenError, match="does not match this filter"):
        codec.decode(token, STREAM, b"o" * 16)


def test_token_from_another_secret_is_refused(codec: TokenCodec) -> None:
    token = TokenCodec(b"another-secret-xyz").encode(STREAM, SCOPE, POSITIONS)
    with pytest.raises(TokenError):
        codec.decode(token, STREAM, SCOPE)


def test_edited_offset_is_refused(codec: TokenCodec) -> None:
    raw = bytearray(base64.urlsafe_b64decode(codec.encode(STREAM, SCOPE, [[10, 20]]) + "=="))
    raw[2] = 99  # first offset
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        codec.decode(forged, STREAM, SCOPE)


def test_history_cursor_is_not_a_last_event_id(codec: TokenCodec) -> None:
    cursor = codec.encode(HISTORY, SCOPE, POSITIONS)
    with pytest.raises(TokenError, match="another kind"):
        codec.decode(cursor, STREAM, SCOPE)


@pytest.mark.parametrize("token", ["", "!!!not-base64!!!", "AQ", "A" * 5000, "AQMAAQB8QGYGrR_dXSS7wJ"],
                         ids=["empty", "not-base64", "too-short", "too-long", "truncated"])
def test_malformed_token_is_refused(codec: TokenCodec, token: str) -> None:
    with pytest.raises(TokenError):
        codec.decode(token, STREAM, SCOPE)


def test_short_secret_is_refused_before_use() -> None:
    with pytest.raises(ValueError, match="at least 8 bytes"):
        TokenCodec(b"short")


def test_the_partition_bound_keeps_a_token_at_the_largest_offsets_under_the_size_limit() -> None:
    from app.fanout.tokens import MAX_TOKEN_CHARS, check_room, max_partitions
    from streams.errors import LimitExceeded

    codec, scope, top = TokenCodec(b"k" * 16), b"s" * 16, 2**63 - 1
    for kind, per in ((STREAM, 1), (HISTORY, 2)):
        n = max_partitions(kind)
        token = codec.encode(kind, scope, [[top] * (n * per)])
        assert len(token) <= MAX_TOKEN_CHARS and codec.decode(token, kind, scope)
        assert len(codec.encode(kind, scope, [[top] * ((n + 1) * per)])) > MAX_TOKEN_CHARS
        check_room(kind, {"a": n})
        with pytest.raises(LimitExceeded, match=f"at most {n} partitions"):
            check_room(kind, {"a": n, "b": 1})
