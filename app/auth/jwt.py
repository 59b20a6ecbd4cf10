"""JWT verification with PyJWT: the algorithm comes from the configured key, never from the token.

Keys: an HS256 secret, a PEM public key (RS256 for RSA, ES256/384/512 for the EC curve), or a JWKS URL
whose keys are cached and fetched again when a token names an unknown `kid` (at most once per
`JWKS_REFETCH_S`, so forged kids cannot make the edge hammer the identity provider).

A token verified once is remembered (`VERIFIED_CACHE` of them) with the key set that verified it: the
same bytes are then accepted until their `exp` (plus the leeway) without verifying again. Checking the
token was about a sixth of the edge's CPU per single POST; only expiry depends on the time, and a
refreshed JWKS forgets every remembered token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.auth.errors import AuthConfigError, Unauthenticated

log = logging.getLogger(__name__)
JWKS_REFETCH_S = 30.0  # the shortest time between two fetches of the JWKS
JWKS_TIMEOUT_S = 5.0
VERIFIED_CACHE = 1024  # tokens whose verified claims are kept (about 1 KB each); the oldest goes first
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A key and the one algorithm it verifies."""

    key: Any
    algorithm: str


def looks_like_jwt(value: str) -> bool:
    """Tell whether a bearer value has the shape of a JWS (three dot-separated parts, header first)."""
    return value.count(".") == 2 and value.startswith("eyJ")


def public_key_from_file(path: Path) -> VerifyingKey:
    """Load a PEM public key and pick its algorithm from its type (RSA: RS256; EC: by curve)."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AuthConfigError(f"ES_AUTH_JWT_PUBLIC_KEY_FILE {str(path)!r} is not a readable PEM public key: "
                              f"{exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return VerifyingKey(key, "RS256")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return VerifyingKey(key, EC_ALGORITHMS[key.curve.name])
    raise AuthConfigError(f"ES_AUTH_JWT_PUBLIC_KEY_FILE {str(path)!r} holds a {type(key).__name__}; use an RSA "
                          "or an EC (P-256, P-384, P-521) public key")


class JwksKeys:
    """Signing keys of a JWKS URL by `kid`, fetched in a thread (PyJWKClient is synchronous)."""

    def __init__(self, url: str) -> None:
        self.client = jwt.PyJWKClient(url, cache_keys=False, cache_jwk_set=False, timeout=JWKS_TIMEOUT_S)
        self.url = url
        self.keys: dict[str | None, VerifyingKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, kid: str | None) -> VerifyingKey:
        """Return the key a token names, fetching the set again (rate-limited) when it is unknown."""
        found = self._pick(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._pick(kid)
            recent = self._fetched_at is not None and time.monotonic() - self._fetched_at < JWKS_REFETCH_S
            if found is None and not recent:
                await self.refresh()
                found = self._pick(kid)
        if found is None:
            raise Unauthenticated(f"unknown signing key: no key with kid {kid!r} in the JWKS" if kid
                                  else "the token names no kid and the JWKS has more than one key")
        return found

    def _pick(self, kid: str | None) -> VerifyingKey | None:
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid)

    async def refresh(self) -> None:
        """Fetch the key set; a failure keeps the keys already known."""
        self._fetched_at = time.monotonic()
        try:
            jwks = await asyncio.to_thread(self.client.get_signing_keys, True)
        except jwt.PyJWKClientError as exc:
            log.warning("Fetching the JWKS at %s failed: %s", self.url, exc)
            return
        keys: dict[str | None, VerifyingKey] = {}
        for item in jwks:
            if item.algorithm_name not in ASYMMETRIC:  # a symmetric key published in a JWKS is never trusted
                continue
            keys[item.key_id] = VerifyingKey(item.key, item.algorithm_name)
        self.keys = keys
        log.info("Loaded %d signing keys from the JWKS at %s.", len(keys), self.url)


class JwtVerifier:
    """Check signature, `exp` (required), `sub` (required), and `aud`/`iss` when configured."""

    def __init__(self, *, key: VerifyingKey | None = None, jwks: JwksKeys | None = None,
                 audience: str | None = None, issuer: str | None = None, leeway_s: float = 10.0) -> None:
        if (key is None) == (jwks is None):
            raise AuthConfigError("a JWT verifier needs exactly one of a key and a JWKS")
        self.key, self.jwks = key, jwks
        self.audience, self.issuer, self.leeway_s = audience, issuer, leeway_s
        self._verified: dict[str, tuple[dict[str, Any], object]] = {}  # token -> (claims, key set verifying it)

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims (do not change them), raising Unauthenticated with the reason."""
        hit = self._verified.get(token)
        if hit is not None:
            claims, keys = hit
            if keys is self._keys() and time.time() < float(claims["exp"]) + self.leeway_s:  # PyJWT's exp rule
                return claims
            del self._verified[token]  # expired (verify again says so) or the key set changed
        claims = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (claims, self._keys())
        return claims

    def _keys(self) -> object:
        """The key set in use: a JWKS refresh replaces it, which no remembered token survives."""
        return self.key if self.jwks is None else self.jwks.keys

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("malformed token: not a JWT") from None
        key = self.key if self.key is not None else await self._jwks_key(header)
        if header.get("alg") != key.algorithm:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted; this edge verifies "
                                  f"{key.algorithm} only")
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": self.audience is not None,
                                   "verify_iss": self.issuer is not None}
        try:
            claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[key.algorithm], audience=self.audience,
                                                issuer=self.issuer, leeway=self.leeway_s, options=options)  # type: ignore[arg-type]
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired: get a fresh one") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"wrong audience: the token is not meant for {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"wrong issuer: tokens must be issued by {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("forged token: the signature does not verify") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthenticated("token 'sub' must be a non-empty string")
        return claims

    async def _jwks_key(self, header: dict[str, Any]) -> VerifyingKey:
        assert self.jwks is not None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("malformed token: kid must be a string")
        return await self.jwks.get(kid)
