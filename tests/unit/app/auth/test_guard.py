"""The edge's credential check over its real route table: every route but the public ones answers 401
without a credential, admin routes 403 without `admin`; carriers, ES_AUTH=off, CORS and the OpenAPI."""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app import problems
from app.auth import PUBLIC_PATHS, AuthConfigError, Authenticator, CurrentPrincipal, authenticate
from app.auth.credentials import install_log_redaction
from app.auth.guard import QUERY_TOKEN_PATHS, index_routes
from app.main import create_app
from streams.settings import Settings
from tests.auth_helpers import TEST_SECRET, bearer, token

SETTINGS = Settings(auth_jwt_secret=TEST_SECRET)
APP = create_app(SETTINGS)  # not started: every check below answers before a route touches Kafka
ADMIN_ONLY = {
    ("POST", "/api/v1/topics"), ("DELETE", "/api/v1/topics/{name}"), ("GET", "/api/v1/routes"),
    ("GET", "/api/v1/dlq"), ("GET", "/api/v1/dlq/{partition}/{offset}"), ("POST", "/api/v1/dlq/replay"),
    ("POST", "/api/v1/registry/subjects/{subject:path}/versions"),
    ("DELETE", "/api/v1/registry/subjects/{subject:path}"),
    ("PUT", "/api/v1/registry/config"), ("PUT", "/api/v1/registry/config/{subject:path}"),
    ("POST", "/api/v1/endpoints"), ("DELETE", "/api/v1/endpoints/{name}"),
}


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """Return (method, path template) of every route the app serves, from its own route table."""
    found = set()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path))
    return sorted(found)


ROUTES = routes(APP)
PROTECTED = [r for r in ROUTES if r[1] not in PUBLIC_PATHS]


def concrete(path: str) -> str:
    """Fill a path template's parameters with values of the right shape."""
    return re.sub(r"\{[^}]+\}", "1", path)


def client(app: FastAPI = APP) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def call(method: str, path: str, **kwargs: Any) -> Any:
    return client().request(method, concrete(path), **kwargs)


def test_route_table_is_walked_whole() -> None:
    assert len(PROTECTED) > 30 and ("GET", "/api/v1/events/stream") in PROTECTED


def test_public_and_query_lists_name_only_real_routes() -> None:
    paths = {path for _, path in ROUTES}
    assert PUBLIC_PATHS <= paths
    assert QUERY_TOKEN_PATHS <= paths


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_non_public_route_answers_401_without_a_credential(method: str, path: str) -> None:
    resp = call(method, path)
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert "missing credential" in resp.json()["detail"]


WITH_BODY = [r for r in PROTECTED if r[0] in ("POST", "PUT", "PATCH")]
MALFORMED = {"content": b'{"topic": "t", ', "headers": {"content-type": "application/json"}}


@pytest.mark.parametrize(("method", "path"), WITH_BODY)
def test_credential_is_checked_before_a_malformed_body_is_parsed(method: str, path: str) -> None:
    resp = call(method, path, **MALFORMED)
    assert resp.status_code == 401, resp.text
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert "missing credential" in resp.json()["detail"]


def test_malformed_body_with_a_valid_credential_is_still_refused_by_its_route() -> None:
    # /api/v1/events reads its own body (400 Malformed JSON): tests/integration/test_auth.py, on a started edge.
    headers = {"content-type": "application/json", **bearer(token())}
    resp = call("POST", "/api/v1/topics", content=MALFORMED["content"], headers=headers)
    assert resp.status_code == 422 and "JSON decode error" in resp.json()["detail"]


def test_registry_routes_answer_401_with_the_confluent_error_code() -> None:
    resp = call("POST", "/api/v1/registry/subjects/s/versions", **MALFORMED)
    assert resp.status_code == 401 and resp.json()["error_code"] == 401


def test_wrong_method_on_a_protected_path_asks_for_a_credential_first() -> None:
    assert call("PATCH", "/api/v1/topics").status_code == 401
    assert call("PATCH", "/api/v1/topics", headers=bearer(token())).status_code == 405
    assert call("GET", "/no/such/route").status_code == 404  # no route: nothing to protect


def test_an_app_without_the_middleware_is_still_guarded_by_the_dependency() -> None:
    app = FastAPI(dependencies=[Depends(authenticate)])
    app.state.authenticator = Authenticator.from_settings(SETTINGS)
    problems.install(app)

    @app.post("/who")
    async def who(principal: CurrentPrincipal) -> str:
        return principal.sub

    index_routes(app)
    assert client(app).post("/who").status_code == 401
    assert client(app).post("/who", headers=bearer(token("carol"))).json() == "carol"


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
def test_public_routes_need_no_credential(path: str) -> None:
    assert call("GET", path).status_code != 401


@pytest.mark.parametrize(("value", "why"), [
    (token(secret="x" * 40), "forged token"), (token(ttl_s=-60), "token expired"),
    ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "not accepted"), ("not-a-jwt", "malformed token"),
])
def test_bad_tokens_answer_401_saying_why_without_echoing_them(value: str, why: str) -> None:
    resp = call("GET", "/api/v1/topics", headers=bearer(value))
    assert resp.status_code == 401 and why in resp.json()["detail"]
    assert value not in resp.text and value not in resp.headers["www-authenticate"]


def test_malformed_authorization_header_answers_401() -> None:
    resp = call("GET", "/api/v1/topics", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status_code == 401 and "malformed Authorization header" in resp.json()["detail"]


@pytest.mark.parametrize(("method", "path"), sorted(ADMIN_ONLY))
def test_admin_routes_answer_403_to_other_scopes(method: str, path: str) -> None:
    resp = call(method, path, headers=bearer(token("bob", "subscribe:* publish:*")))
    assert resp.status_code == 403, resp.text
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert 'scope="admin"' in resp.headers["www-authenticate"]
    assert path in resp.json()["detail"]


@pytest.mark.parametrize(("method", "path"), [r for r in PROTECTED if r not in ADMIN_ONLY])
def test_other_routes_pass_the_check_with_any_valid_credential(method: str, path: str) -> None:
    # Topic scopes are checked further in (integration tests); here only the credential check is passed.
    assert call(method, path, headers=bearer(token("bob", "subscribe:nothing"))).status_code not in (401, 403)


def test_cookie_carries_a_token() -> None:
    browser = client()
    browser.cookies.set("es_token", token(scope="subscribe:x"))
    resp = browser.get("/api/v1/routes")
    assert resp.status_code == 403  # authenticated by the cookie, then refused for lacking admin


def test_query_token_is_taken_on_stream_routes_only() -> None:
    value = token(scope="subscribe:x")
    assert client().get("/api/v1/routes", params={"access_token": value}).status_code == 401
    assert client().get("/api/v1/events/stream", params={"access_token": value}).status_code not in (401, 403)


def test_api_key_authenticates_by_header_and_as_bearer(tmp_path: Any) -> None:
    import hashlib
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- name: ops\n  sha256: {hashlib.sha256(b'k-ops-123').hexdigest()}\n  scope: admin\n")
    app = create_app(Settings(auth_api_keys_file=keys))
    assert client(app).get("/api/v1/routes", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client(app).get("/api/v1/routes", headers={"X-API-Key": "k-ops-123"}).status_code != 401
    assert client(app).get("/api/v1/routes", headers=bearer("k-ops-123")).status_code != 401


def test_auth_off_serves_everyone_as_admin_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app(Settings(auth="off"))
    assert "ES_AUTH=off" in caplog.text
    assert client(app).post("/api/v1/dlq/replay", json={"all": True}).status_code not in (401, 403)


def test_auth_on_without_a_key_source_refuses_to_start() -> None:
    with pytest.raises(AuthConfigError, match="ES_AUTH_JWT_SECRET"):
        create_app(Settings())


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(auth_jwt_secret="short")


def test_cors_gives_credentials_to_listed_origins_only() -> None:
    app = create_app(Settings(auth_jwt_secret=TEST_SECRET, cors_origins="https://dash.example"))
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    ok = client(app).options("/api/v1/topics", headers={"Origin": "https://dash.example", **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://dash.example"
    assert ok.headers["access-control-allow-credentials"] == "true"
    other = client(app).options("/api/v1/topics", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_cors_preflight_needs_no_credential_and_401s_carry_cors_headers() -> None:
    app = create_app(Settings(auth_jwt_secret=TEST_SECRET, cors_origins="https://dash.example"))
    origin = {"Origin": "https://dash.example"}
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = client(app).options("/api/v1/events", headers={**origin, **preflight})
    assert ok.status_code == 200 and "authorization" in ok.headers["access-control-allow-headers"].lower()
    refused = client(app).post("/api/v1/events", content=MALFORMED["content"], headers=origin)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://dash.example"


def test_openapi_declares_bearer_and_api_key_for_the_authorize_button() -> None:
    doc = client().get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert schemes["apiKey"]["name"] == "X-API-Key"
    assert doc["paths"]["/api/v1/topics"]["get"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_query_tokens_are_redacted_from_server_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    secret = token()
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logging.getLogger("uvicorn.access").info('%s - "GET %s HTTP/1.1" 200', "127.0.0.1",
                                                 f"/api/v1/events/stream?access_token={secret}&x=1")
    assert secret not in caplog.text and "access_token=[redacted]" in caplog.text


def sync_calls(dependant: Any) -> list[str]:
    """Return the plain-`def` callables (endpoint or dependency, at any depth) FastAPI would run in its thread pool."""
    found, todo = [], [dependant]
    while todo:
        dep = todo.pop()
        call = dep.call
        if call is not None and not inspect.isclass(call) and not inspect.iscoroutinefunction(call):
            found.append(getattr(call, "__qualname__", repr(call)))
        todo.extend(dep.dependencies)
    return found


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    """A plain-def dependency costs every request a thread hop: about a tenth of a publish's CPU when
    `CurrentPrincipal` and `Limits` were plain functions (py-spy over bench/publish_bench.py's load)."""
    sync = {}
    for route in iter_route_contexts(APP.routes):
        dependant = getattr(route.route, "dependant", None)
        if dependant is not None and sync_calls(dependant):
            sync[route.path] = sync_calls(dependant)
    assert len(PROTECTED) > 40 and sync == {}
