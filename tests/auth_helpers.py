"""Credentials for tests: the test suite runs with authentication on, and this is its one source of tokens.

Edges started by the integration helpers get `TEST_SECRET` (tests/integration/conftest.py `settings_env`),
and every httpx client of an integration test sends `ADMIN_TOKEN` unless the request names its own
credential (`send_admin_token_by_default`); `anonymous()` turns that off for tests of the 401 answers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt

TEST_SECRET = "eventstream-test-jwt-secret-0123456789abcdef"  # HS256 needs at least 32 bytes
KEY_SOURCES = ("ES_AUTH_JWT_SECRET", "ES_AUTH_JWT_PUBLIC_KEY_FILE", "ES_AUTH_JWKS_URL", "ES_AUTH_API_KEYS_FILE")


def token(sub: str = "test-admin", scope: str = "admin", *, ttl_s: float = 24 * 3600, secret: str = TEST_SECRET,
          algorithm: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """Return a signed JWT for `sub` with `scope` (space-separated), valid for `ttl_s` seconds."""
    body: dict[str, Any] = {"sub": sub, "scope": scope, "exp": int(time.time() + ttl_s), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm=algorithm, headers=headers)


def bearer(value: str) -> dict[str, str]:
    """Return the Authorization header carrying `value`."""
    return {"Authorization": f"Bearer {value}"}


ADMIN_TOKEN = token()
ADMIN_HEADERS = bearer(ADMIN_TOKEN)


def with_test_secret(env: dict[str, str]) -> dict[str, str]:
    """Give a child process's environment the test JWT secret unless it names another key source or auth is off."""
    if env.get("ES_AUTH", "on") == "on" and not any(env.get(name) for name in KEY_SOURCES):
        env["ES_AUTH_JWT_SECRET"] = TEST_SECRET
    return env


_defaults = {"on": True}


@contextlib.contextmanager
def anonymous() -> Iterator[None]:
    """Create httpx clients without the default admin token inside this block (tests of 401)."""
    before, _defaults["on"] = _defaults["on"], False
    try:
        yield
    finally:
        _defaults["on"] = before


def _authorizing(init: Callable[..., None]) -> Callable[..., None]:
    def patched(self: Any, *args: Any, headers: Any = None, **kwargs: Any) -> None:
        merged = httpx.Headers(headers)
        if _defaults["on"] and "authorization" not in merged and "x-api-key" not in merged:
            merged["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        init(self, *args, headers=merged, **kwargs)

    return patched


def send_admin_token_by_default(monkeypatch: Any) -> None:
    """Make every httpx client (and httpx.get/post/...) send the admin token unless told otherwise."""
    for cls in (httpx.Client, httpx.AsyncClient):
        monkeypatch.setattr(cls, "__init__", _authorizing(cls.__init__))


def registry_conf(url: str, value: str = ADMIN_TOKEN) -> dict[str, str]:
    """Return a confluent-kafka SchemaRegistryClient config that sends `value` as a bearer token.

    confluent-kafka's STATIC_TOKEN source needs a logical cluster too (sent as `target-sr-cluster`,
    which this registry ignores)."""
    return {"url": url, "bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": value,
            "bearer.auth.logical.cluster": "eventstream"}
