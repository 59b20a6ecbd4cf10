"""Turn a credential into a Principal: JWTs by the configured key, other bearer values as API keys."""

from __future__ import annotations

import logging

from app.auth.api_keys import SUB_PREFIX, ApiKeys
from app.auth.credentials import Credential
from app.auth.errors import AuthConfigError, Unauthenticated
from app.auth.jwt import JwksKeys, JwtVerifier, VerifyingKey, looks_like_jwt, public_key_from_file
from app.auth.principal import ANONYMOUS_ADMIN, Principal
from app.auth.scopes import parse_scope
from streams.settings import Settings

log = logging.getLogger(__name__)
NOTHING_CONFIGURED = (
    "ES_AUTH is on but no credential source is configured: set ES_AUTH_JWT_SECRET (at least 32 bytes), "
    "ES_AUTH_JWT_PUBLIC_KEY_FILE, ES_AUTH_JWKS_URL or ES_AUTH_API_KEYS_FILE; or set ES_AUTH=off to serve "
    "everyone as admin (development only). `make run` generates a secret and prints tokens."
)


class Authenticator:
    """The edge's credential check: None of its sources is consulted per event, only per request."""

    def __init__(self, *, enabled: bool, jwt: JwtVerifier | None = None, api_keys: ApiKeys | None = None) -> None:
        if enabled and jwt is None and api_keys is None:
            raise AuthConfigError(NOTHING_CONFIGURED)
        self.enabled, self.jwt, self.api_keys = enabled, jwt, api_keys

    @classmethod
    def from_settings(cls, settings: Settings, *, warn: bool = True) -> Authenticator:
        """Build the authenticator the settings describe, raising AuthConfigError when they are unusable."""
        if settings.auth == "off":
            if warn:
                log.warning("ES_AUTH=off: every request is served as admin without a credential. Never "
                            "expose this edge beyond a development machine.")
            return cls(enabled=False)
        key: VerifyingKey | None = None
        jwks: JwksKeys | None = None
        if settings.auth_jwt_secret is not None:
            key = VerifyingKey(settings.auth_jwt_secret.get_secret_value().encode(), "HS256")
        elif settings.auth_jwt_public_key_file is not None:
            key = public_key_from_file(settings.auth_jwt_public_key_file)
        elif settings.auth_jwks_url is not None:
            jwks = JwksKeys(settings.auth_jwks_url)
        verifier = None
        if key is not None or jwks is not None:
            verifier = JwtVerifier(key=key, jwks=jwks, audience=settings.auth_jwt_audience,
                                   issuer=settings.auth_jwt_issuer, leeway_s=settings.auth_jwt_leeway_s)
        api_keys = ApiKeys.from_file(settings.auth_api_keys_file) if settings.auth_api_keys_file else None
        return cls(enabled=True, jwt=verifier, api_keys=api_keys)

    async def authenticate(self, credential: Credential | None) -> Principal:
        """Return the principal of a credential, raising Unauthenticated with the reason."""
        if not self.enabled:
            return ANONYMOUS_ADMIN
        if credential is None:
            raise Unauthenticated("missing credential: send 'Authorization: Bearer <token>' (or X-API-Key, "
                                  "or the es_token cookie)")
        value = credential.value
        if credential.carrier != "x-api-key" and self.jwt is not None and looks_like_jwt(value):
            claims = await self.jwt.verify(value)
            return Principal(claims["sub"], parse_scope(claims.get("scope")), float(claims["exp"]), "jwt")
        if self.api_keys is not None:
            key = self.api_keys.find(value)
            if key is None:
                raise Unauthenticated("unknown API key")
            return Principal(SUB_PREFIX + key.name, key.scopes, None, "api_key")
        raise Unauthenticated("malformed token: not a JWT")
