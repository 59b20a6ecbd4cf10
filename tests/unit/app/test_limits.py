"""Rate limits per principal: 429 problem+json with Retry-After and the draft's RateLimit fields, events
counted per batch, streams held per principal, keys from the principal or the client address."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app import problems
from app.limits import Limits, RateLimiter, principal_key, storage_uri
from streams.settings import Settings


def client_for(**settings: object) -> tuple[TestClient, RateLimiter]:
    """Return a client of a tiny app whose routes publish `n` events and open a stream, as `sub` if given."""
    app = FastAPI()
    problems.install(app)
    limiter = app.state.limiter = RateLimiter(Settings(**settings))  # type: ignore[arg-type]

    @app.middleware("http")
    async def principal(request: Request, call_next):  # type: ignore[no-untyped-def]
        if sub := request.headers.get("x-sub"):
            request.state.principal = SimpleNamespace(sub=sub)
        return await call_next(request)

    @app.post("/publish/{n}")
    async def publish(n: int, limits: Limits) -> dict[str, int]:
        await limits.publish(n)
        return {"ok": n}

    @app.get("/open")
    async def open_stream(limits: Limits) -> dict[str, bool]:
        await limits.open_stream()  # held until the test releases it through the limiter's counts
        return {"ok": True}

    return TestClient(app), limiter


def test_batch_counts_each_event_and_the_refusal_carries_the_draft_headers() -> None:
    client, _ = client_for(rate_limit_publish="10/minute")
    assert client.post("/publish/6").status_code == 200
    resp = client.post("/publish/5")
    assert resp.status_code == 429
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["title"] == "Too many requests" and "ES_RATE_LIMIT_PUBLISH" in resp.json()["detail"]
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["ratelimit-policy"] == '"publish";q=10;w=60'
    assert resp.headers["ratelimit"] == f'"publish";r=4;t={resp.headers["retry-after"]}'
    assert client.post("/publish/4").status_code == 200  # the refused batch spent nothing


def test_a_batch_larger_than_any_window_is_413_naming_the_limit() -> None:
    client, _ = client_for(rate_limit_publish="10/second")
    resp = client.post("/publish/11")
    assert resp.status_code == 413 and "ES_RATE_LIMIT_PUBLISH" in resp.json()["detail"]


def test_principals_are_counted_apart() -> None:
    client, _ = client_for(rate_limit_publish="3/minute")
    assert client.post("/publish/3", headers={"x-sub": "alice"}).status_code == 200
    assert client.post("/publish/1", headers={"x-sub": "alice"}).status_code == 429
    assert client.post("/publish/3", headers={"x-sub": "bob"}).status_code == 200
    assert client.post("/publish/3").status_code == 200  # no principal: the client address


def test_stream_opens_are_rate_limited() -> None:
    client, _ = client_for(rate_limit_stream_opens="2/minute", max_streams_per_principal=100)
    assert [client.get("/open").status_code for _ in range(3)] == [200, 200, 429]


def test_open_streams_per_principal_are_capped_and_released() -> None:
    client, limiter = client_for(max_streams_per_principal=2)
    assert [client.get("/open", headers={"x-sub": "a"}).status_code for _ in range(2)] == [200, 200]
    resp = client.get("/open", headers={"x-sub": "a"})
    assert resp.status_code == 429 and "ES_MAX_STREAMS_PER_PRINCIPAL" in resp.json()["detail"]
    assert resp.headers["ratelimit-policy"] == '"streams";q=2;qu="concurrent-requests"'
    assert resp.headers["retry-after"] == "5"
    assert client.get("/open", headers={"x-sub": "b"}).status_code == 200
    assert limiter.open_streams == {"sub:a": 2, "sub:b": 1}


async def test_a_slot_is_released_once() -> None:
    limiter = RateLimiter(Settings(max_streams_per_principal=1))
    slot = await limiter.open_stream("sub:a")
    slot.release()
    slot.release()
    assert limiter.open_streams == {}
    await limiter.open_stream("sub:a")


async def test_a_held_response_releases_its_slot_when_the_body_ends() -> None:
    from starlette.responses import Response

    limiter = RateLimiter(Settings())
    slot = await limiter.open_stream("sub:a")
    held = slot.hold(Response(b"x"))
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await held({"type": "http"}, receive, send)
    assert limiter.open_streams == {} and sent[-1]["body"] == b"x"


async def test_a_lost_storage_lets_requests_pass() -> None:
    limiter = RateLimiter(Settings(rate_limit_storage="redis://127.0.0.1:1", rate_limit_publish="1/minute"))
    await limiter.publish("sub:a", 1)
    await limiter.publish("sub:a", 1)  # would be refused; the storage is unreachable, so it passes


def test_principal_key_prefers_the_sub() -> None:
    with_sub = SimpleNamespace(state=SimpleNamespace(principal=SimpleNamespace(sub="svc")), client=None)
    without = SimpleNamespace(state=SimpleNamespace(), client=SimpleNamespace(host="10.0.0.9"))
    assert principal_key(with_sub) == "sub:svc"  # type: ignore[arg-type]
    assert principal_key(without) == "addr:10.0.0.9"  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "uri"), [("memory://", "async+memory://"), ("redis://h:1", "async+redis://h:1")])
def test_storage_uri_uses_the_async_storages(given: str, uri: str) -> None:
    assert storage_uri(given) == uri


@pytest.mark.parametrize("bad", ["1000", "fast", "10/fortnight"])
def test_settings_refuse_a_limit_not_in_the_limits_notation(bad: str) -> None:
    with pytest.raises(ValueError, match="rate_limit_publish"):
        Settings(rate_limit_publish=bad)
