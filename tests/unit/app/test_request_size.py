"""Request bounds before any route: 431 past the header bytes, 413 past the body bytes (declared or counted)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app import problems
from app.request_size import RequestSizeLimit


def client() -> TestClient:
    app = FastAPI()
    problems.install(app)
    app.add_middleware(RequestSizeLimit, max_header_bytes=4096, max_body_bytes=100)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return TestClient(app)


def test_a_body_within_the_limit_passes() -> None:
    assert client().post("/echo", content=b"x" * 100).json() == {"bytes": 100}


def test_a_declared_body_over_the_limit_is_413_before_it_is_read() -> None:
    resp = client().post("/echo", content=b"x" * 101)
    assert resp.status_code == 413 and "ES_HTTP_MAX_BODY_BYTES" in resp.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413() -> None:
    resp = client().post("/echo", content=iter([b"x" * 60, b"x" * 60]))
    assert resp.status_code == 413 and "ES_HTTP_MAX_BODY_BYTES" in resp.json()["detail"]


def test_headers_over_the_limit_are_431() -> None:
    resp = client().post("/echo", content=b"", headers={"x-big": "y" * 5000})
    assert resp.status_code == 431 and "ES_HTTP_MAX_HEADER_BYTES" in resp.json()["detail"]
