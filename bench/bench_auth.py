"""Credentials of the benchmarks: each run makes a random HS256 secret for the edges it starts and signs an
admin token with it (`--auth off` in bench/sse_load.py compares against an edge without authentication)."""

from __future__ import annotations

import os
import secrets
import time

import jwt

SECRET = secrets.token_urlsafe(48)
TOKEN_ENV = "ES_BENCH_TOKEN"  # how child processes of a benchmark (bench/sse_clients.py) get the token


def admin_token(ttl_s: float = 24 * 3600) -> str:
    """Return an admin JWT signed with this run's secret."""
    return jwt.encode({"sub": "bench", "scope": "admin", "exp": int(time.time() + ttl_s)}, SECRET, "HS256")


def edge_env(env: dict[str, str], auth: str = "on") -> dict[str, str]:
    """Give an edge's environment this run's secret (or ES_AUTH=off), and export the token to child clients."""
    env["ES_AUTH"] = auth
    if auth == "on":
        env["ES_AUTH_JWT_SECRET"] = SECRET
        os.environ[TOKEN_ENV] = admin_token()
    else:
        env.pop("ES_AUTH_JWT_SECRET", None)
        os.environ.pop(TOKEN_ENV, None)
    return env


def auth_headers() -> dict[str, str]:
    """Return the Authorization header of this run's token (empty with --auth off)."""
    value = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {value}"} if value else {}
