"""JWT verification: the algorithm comes from the configured key; each bad token gets its own 401 reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.auth.errors import AuthConfigError, Unauthenticated
from app.auth.jwt import JwksKeys, JwtVerifier, VerifyingKey, public_key_from_file
from tests.auth_helpers import TEST_SECRET, token

HS = VerifyingKey(TEST_SECRET.encode(), "HS256")


async def reason(verifier: JwtVerifier, value: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(value)
    assert value not in str(caught.value)  # never echoes the token
    return str(caught.value)


async def test_valid_token_returns_its_claims() -> None:
    claims = await JwtVerifier(key=HS).verify(token("alice", "subscribe:a.*"))
    assert claims["sub"] == "alice" and claims["scope"] == "subscribe:a.*"


async def test_forged_signature_is_refused() -> None:
    forged = token(secret="another-secret-of-at-least-32-bytes-long")
    assert "forged" in await reason(JwtVerifier(key=HS), forged)


async def test_alg_none_is_refused() -> None:
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({"sub": "x", "scope": "admin", "exp": time.time() + 60})
                                    .encode()).rstrip(b"=").decode()
    assert "'none' is not accepted" in await reason(JwtVerifier(key=HS), f"{head}.{body}.")


async def test_expired_token_is_refused_past_the_leeway() -> None:
    verifier = JwtVerifier(key=HS, leeway_s=10)
    assert (await verifier.verify(token(ttl_s=-5)))["sub"]  # within the leeway
    assert "expired" in await reason(verifier, token(ttl_s=-30))


async def test_wrong_audience_and_issuer_are_refused_when_configured() -> None:
    verifier = JwtVerifier(key=HS, audience="eventstream", issuer="https://idp.example")
    good = token(aud="eventstream", iss="https://idp.example")
    assert (await verifier.verify(good))["sub"] == "test-admin"
    assert "wrong audience" in await reason(verifier, token(aud="other", iss="https://idp.example"))
    assert "wrong issuer" in await reason(verifier, token(aud="eventstream", iss="https://evil.example"))
    assert "'aud'" in await reason(verifier, token(iss="https://idp.example"))


async def test_exp_and_sub_are_required() -> None:
    no_exp = jwt.encode({"sub": "x"}, TEST_SECRET, algorithm="HS256")
    no_sub = jwt.encode({"exp": time.time() + 60}, TEST_SECRET, algorithm="HS256")
    assert "'exp'" in await reason(JwtVerifier(key=HS), no_exp)
    assert "'sub'" in await reason(JwtVerifier(key=HS), no_sub)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_signed_with(key: bytes, claims: dict[str, object]) -> str:
    """Sign by hand (PyJWT itself refuses a PEM as an HMAC key)."""
    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


async def test_public_key_file_picks_rs256_and_refuses_hs_confusion(tmp_path: Path) -> None:
    private = rsa_key()
    path = pem(private, tmp_path / "rsa.pem")
    verifier = JwtVerifier(key=public_key_from_file(path))
    assert (await verifier.verify(jwt.encode({"sub": "svc", "exp": time.time() + 60}, private, "RS256")))["sub"]
    # RS/HS confusion: an HS256 token "signed" with the public key's PEM text must not verify.
    confused = hs256_signed_with(path.read_bytes(), {"sub": "x", "exp": time.time() + 60})
    assert "'HS256' is not accepted" in await reason(verifier, confused)


async def test_ec_public_key_file_verifies_es256(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    verifier = JwtVerifier(key=public_key_from_file(pem(private, tmp_path / "ec.pem")))
    assert public_key_from_file(tmp_path / "ec.pem").algorithm == "ES256"
    assert (await verifier.verify(jwt.encode({"sub": "e", "exp": time.time() + 60}, private, "ES256")))["sub"] == "e"


def test_unreadable_public_key_file_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(AuthConfigError, match="ES_AUTH_JWT_PUBLIC_KEY_FILE"):
        public_key_from_file(tmp_path / "bad.pem")


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts its fetches."""

    def __init__(self, jwks: dict[str, object]) -> None:
        self.jwks, self.fetches = jwks, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def jwk(private: rsa.RSAPrivateKey, kid: str) -> dict[str, object]:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return {**data, "kid": kid, "alg": "RS256", "use": "sig"}


@pytest.fixture
def jwks() -> Iterator[tuple[JwksServer, rsa.RSAPrivateKey]]:
    private = rsa_key()
    server = JwksServer({"keys": [jwk(private, "k1")]})
    yield server, private
    server.server.shutdown()


async def test_jwks_key_is_fetched_once_and_cached(jwks: tuple[JwksServer, rsa.RSAPrivateKey]) -> None:
    server, private = jwks
    verifier = JwtVerifier(jwks=JwksKeys(server.url))
    for _ in range(3):
        value = jwt.encode({"sub": "j", "exp": time.time() + 60}, private, "RS256", headers={"kid": "k1"})
        assert (await verifier.verify(value))["sub"] == "j"
    assert server.fetches == 1


async def test_unknown_kid_refetches_at_most_once_per_interval(jwks: tuple[JwksServer, rsa.RSAPrivateKey]) -> None:
    server, private = jwks
    keys = JwksKeys(server.url)
    verifier = JwtVerifier(jwks=keys)
    unknown = jwt.encode({"sub": "j", "exp": time.time() + 60}, private, "RS256", headers={"kid": "k9"})
    assert "unknown signing key" in await reason(verifier, unknown)
    assert "unknown signing key" in await reason(verifier, unknown)
    assert server.fetches == 1  # forged kids cannot make the edge hammer the identity provider
    rotated = rsa_key()  # the provider rotates: a new kid appears, fetched once the interval has passed
    server.jwks = {"keys": [jwk(private, "k1"), jwk(rotated, "k2")]}
    keys._fetched_at = time.monotonic() - 60
    value = jwt.encode({"sub": "r", "exp": time.time() + 60}, rotated, "RS256", headers={"kid": "k2"})
    assert (await verifier.verify(value))["sub"] == "r"
    assert server.fetches == 2


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count PyJWT's full verifications."""
    calls: list[str] = []
    real = jwt.decode

    def decode(value: str, *args: object, **kwargs: object) -> object:
        calls.append(value)
        return real(value, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


async def test_a_verified_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch)
    verifier = JwtVerifier(key=HS, leeway_s=0.5)
    value = token("alice", ttl_s=1.0)
    exp = jwt.decode(value, options={"verify_signature": False})["exp"]
    for _ in range(5):
        assert (await verifier.verify(value))["sub"] == "alice"
    assert len(calls) == 2  # one verification, and the line above reading exp
    await asyncio.sleep(max(0.0, exp + 0.5 - time.time()) + 0.05)  # past exp and the leeway (PyJWT's own clock)
    assert "expired" in await reason(verifier, value)  # verified again, and refused
    assert len(calls) == 3


async def test_a_refused_token_is_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch)
    verifier = JwtVerifier(key=HS)
    forged = token(secret="another-secret-of-at-least-32-bytes-long")
    for _ in range(3):
        assert "forged" in await reason(verifier, forged)
    assert len(calls) == 3


async def test_remembered_tokens_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.auth.jwt.VERIFIED_CACHE", 3)
    calls = counting(monkeypatch)
    verifier = JwtVerifier(key=HS)
    values = [token(f"u{i}") for i in range(4)]
    for value in values:
        await verifier.verify(value)
    await verifier.verify(values[3])
    assert len(calls) == 4  # the newest is remembered
    await verifier.verify(values[0])
    assert len(calls) == 5 and len(verifier._verified) == 3  # the oldest was forgotten


async def test_a_refreshed_jwks_forgets_the_remembered_tokens(jwks: tuple[JwksServer, rsa.RSAPrivateKey],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server, private = jwks
    keys = JwksKeys(server.url)
    verifier = JwtVerifier(jwks=keys)
    value = jwt.encode({"sub": "j", "exp": time.time() + 60}, private, "RS256", headers={"kid": "k1"})
    await verifier.verify(value)
    server.jwks = {"keys": [jwk(rsa_key(), "k2")]}  # the provider withdrew k1
    await keys.refresh()
    assert "unknown signing key" in await reason(verifier, value)
