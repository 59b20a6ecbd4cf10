"""The one error handler: every error of the tree becomes problem+json with its status, title and field;
retriable ones carry Retry-After; registry routes add Confluent's error_code and message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from app import problems
from app.auth import Forbidden, Unauthenticated
from app.directory.control import StreamNotFound
from app.directory.endpoints import EndpointExists, EndpointNotFound, InvalidEndpointFilter
from app.durable.registry import ConnectionNotFound
from app.durable.shared import TooManyMembers
from app.fanout.filters import FilterError, parse_filter
from app.fanout.hub import HubClosed, TooManyFilterGroups
from app.fanout.tokens import TokenError
from app.limits import RateLimited
from app.problems import Problem
from app.routes.registry import NoAssociations, RegistryRoute
from streams import errors
from streams.errors import RETRY_AFTER_S, StreamError

PROBLEM = "application/problem+json"

# (error, status, title, field, retriable)
TREE = [
    (errors.ValidationFailed("id must not be empty", field="id"), 422, "Invalid event", "id", False),
    (errors.PayloadTooLarge("body is 2 MB"), 413, "Payload too large", None, False),
    (errors.CodecError("not our wire format"), 422, "Serialization error", None, False),
    (errors.UnknownSchema("schema id 7"), 404, "Unknown schema", None, False),
    (errors.BrokerUnavailable("Kafka did not answer"), 503, "Broker unavailable", None, True),
    (errors.TopicNotFound("no topic t"), 404, "Topic not found", None, False),
    (errors.TopicExists("t exists"), 409, "Topic exists", None, False),
    (errors.TopicProtected("t is internal"), 403, "Topic is internal", None, False),
    (errors.InvalidTopicConfig("bad retention"), 422, "Invalid topic configuration", None, False),
    (errors.SchemaIncompatible("field removed"), 409, "Incompatible schema", None, False),
    (errors.SchemaNotFound("nothing"), 404, "Schema not found", None, False),
    (errors.SubjectNotFound("no subject s"), 404, "Subject not found", None, False),
    (errors.VersionNotFound("no version 3"), 404, "Version not found", None, False),
    (errors.SchemaIdNotFound("no id 9"), 404, "Schema id not found", None, False),
    (errors.SubjectConfigNotFound("no level"), 404, "Subject config not found", None, False),
    (errors.InvalidSchema("not Avro", field="schema"), 422, "Invalid schema", "schema", False),
    (errors.InvalidVersion("version x"), 422, "Invalid version", None, False),
    (errors.InvalidCompatibilityLevel("level x"), 422, "Invalid compatibility level", None, False),
    (errors.RegistryBusy("lost the race"), 503, "Registry busy", None, True),
    (errors.RoutingRulesInvalid("rules.yaml:3"), 500, "Invalid routing rules", None, False),
    (errors.DeadLetterNotFound("no entry 0/1"), 404, "Dead letter not found", None, False),
    (TokenError("token is truncated"), 400, "Invalid token", None, False),
    (FilterError("filter is not valid JSON"), 400, "Invalid filter", "filter", False),
    (HubClosed("the edge is shutting down"), 503, "Edge shutting down", None, True),
    (TooManyFilterGroups("1000 filters"), 503, "Too many filter groups", None, True),
    (errors.LimitExceeded("too many partitions", field="partitions"), 400, "Limit exceeded", "partitions", False),
    (RateLimited("publish limit", {"RateLimit": '"publish";r=0;t=2'}), 429, "Too many requests", None, False),
    (Unauthenticated("token expired: get a fresh one"), 401, "Unauthorized", None, False),
    (Forbidden("no subscribe on topic 't'", needed="subscribe:t"), 403, "Forbidden", None, False),
    (ConnectionNotFound("connection 'c1' does not exist"), 404, "Connection not found", None, False),
    (TooManyMembers("connection 'c1' has 16 streams"), 409, "Too many streams for this connection", None, False),
    (EndpointNotFound("endpoint 'e' does not exist"), 404, "Endpoint not found", None, False),
    (EndpointExists("endpoint 'e' exists"), 409, "Endpoint exists", "name", False),
    (InvalidEndpointFilter("filter: topic 'x' does not exist"), 422, "Invalid filter", "filter", False),
    (StreamNotFound("no live edge lists a stream 's1'"), 404, "Stream not found", None, False),
    (NoAssociations("none kept"), 404, "No associations", None, False),
    (Problem(400, "Invalid since", "since must be ISO-8601", field="since"), 400, "Invalid since", "since", False),
]


def subclasses(cls: type[StreamError]) -> Iterator[type[StreamError]]:
    """Yield every subclass of `cls`, depth first."""
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def raising(exc: Exception) -> APIRouter:
    """Return a router whose every route raises `exc`, at the edge's paths and at a registry path."""
    edge, registry = APIRouter(), APIRouter(route_class=RegistryRoute)

    async def fail() -> None:
        raise exc

    for path in ("/error", "/api/v1/events/stream", "/api/v1/events/history"):
        edge.add_api_route(path, fail)
    registry.add_api_route("/subjects", fail)

    async def by_id(schema_id: int) -> None:
        raise exc

    registry.add_api_route("/schemas/ids/{schema_id}", by_id)
    edge.include_router(registry, prefix="/api/v1/registry")
    return edge


def client_for(exc: Exception) -> TestClient:
    """Return a test client of an app with the edge's handlers whose routes raise `exc`."""
    app = FastAPI()
    problems.install(app)
    app.include_router(raising(exc))
    return TestClient(app, raise_server_exceptions=False)


def test_every_error_of_the_tree_has_a_status_and_a_title() -> None:
    tested = {type(exc) for exc, *_ in TREE}
    for cls in subclasses(StreamError):
        if cls.__module__.startswith(("streams.", "app.")):
            assert cls in tested, f"{cls.__name__} is not in the mapping table of this test"
            assert 400 <= cls.status < 600 and cls.title, cls.__name__


def test_the_edge_errors_join_the_tree() -> None:
    for cls in (TokenError, FilterError, HubClosed, ConnectionNotFound, Problem):
        assert issubclass(cls, StreamError), cls.__name__
    assert issubclass(TokenError, ValueError) and issubclass(FilterError, ValueError)  # old `except` still work


@pytest.mark.parametrize(("exc", "status", "title", "field", "retriable"), TREE,
                         ids=[type(row[0]).__name__ for row in TREE])
def test_error_maps_to_its_status_as_problem_json(exc: StreamError, status: int, title: str, field: str | None,
                                                   retriable: bool) -> None:
    resp = client_for(exc).get("/error")
    assert resp.status_code == status
    assert resp.headers["content-type"] == PROBLEM
    expected = {"type": "about:blank", "title": title, "status": status, "detail": str(exc)}
    if field:
        expected["field"] = field
    assert resp.json() == expected
    assert resp.headers.get("retry-after") == (str(RETRY_AFTER_S) if retriable else None)


def test_token_error_on_the_stream_route_names_last_event_id() -> None:
    resp = client_for(TokenError("token is truncated")).get("/api/v1/events/stream")
    assert resp.status_code == 400
    assert resp.json() == {"type": "about:blank", "title": "Invalid Last-Event-ID", "status": 400,
                           "detail": "cannot resume from this token: token is truncated", "field": "Last-Event-ID"}


def test_token_error_on_the_history_route_names_the_offset_cursor() -> None:
    resp = client_for(TokenError("cursor does not cover this filter's topics")).get("/api/v1/events/history")
    assert resp.status_code == 400
    assert resp.json() == {"type": "about:blank", "title": "Invalid cursor", "status": 400,
                           "detail": "offset is not a cursor of this filter: cursor does not cover this filter's "
                                     "topics", "field": "offset"}


def test_filter_error_names_the_filter_parameter_with_the_parser_message() -> None:
    with pytest.raises(FilterError) as info:
        parse_filter("{not json")
    resp = client_for(info.value).get("/api/v1/events/stream")
    assert resp.status_code == 400
    assert resp.json() == {"type": "about:blank", "title": "Invalid filter", "status": 400,
                           "detail": str(info.value), "field": "filter"}


@pytest.mark.parametrize(("exc", "code"), [
    (errors.SubjectNotFound("subject 'nope-value' not found"), 40401),
    (errors.VersionNotFound("no version 3"), 40402),
    (errors.SchemaIdNotFound("no id 9"), 40403),
    (errors.SubjectConfigNotFound("no level"), 40408),
    (errors.InvalidSchema("not Avro"), 42201),
    (errors.InvalidVersion("version x"), 42202),
    (errors.InvalidCompatibilityLevel("level x"), 42203),
    (errors.RegistryBusy("lost the race"), 50001),
    (NoAssociations("none kept"), 40401),
    (errors.SchemaIncompatible("field removed"), 409),  # no code of its own: Confluent answers the status
    (errors.BrokerUnavailable("registry not running"), 503),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_registry_routes_add_the_confluent_error_code_and_message(exc: StreamError, code: int) -> None:
    resp = client_for(exc).get("/api/v1/registry/subjects")
    assert resp.status_code == exc.status
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert (body["error_code"], body["message"], body["detail"]) == (code, str(exc), str(exc))
    assert resp.headers.get("retry-after") == (str(RETRY_AFTER_S) if exc.retriable else None)


def test_edge_routes_carry_no_confluent_members() -> None:
    body = client_for(errors.SubjectNotFound("no subject s")).get("/error").json()
    assert "error_code" not in body and "message" not in body


def test_registry_request_validation_answers_422_with_error_code() -> None:
    resp = client_for(RuntimeError()).get("/api/v1/registry/schemas/ids/abc")
    assert resp.status_code == 422
    body = resp.json()
    assert body["error_code"] == 422 and body["message"] == body["detail"]
    assert body["detail"].startswith("path.schema_id: ")


def test_edge_request_validation_names_the_field() -> None:
    app = FastAPI()
    problems.install(app)

    @app.get("/items")
    async def items(limit: int) -> None:
        """Take one integer query parameter."""

    resp = TestClient(app).get("/items", params={"limit": "x"})
    assert resp.status_code == 422
    body = resp.json()
    assert body["field"] == "limit" and body["detail"].startswith("query parameter 'limit': ")
    assert "error_code" not in body


def test_unexpected_error_is_a_500_problem() -> None:
    resp = client_for(RuntimeError("boom")).get("/error")
    assert resp.status_code == 500
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["detail"] == "RuntimeError: boom"


def test_auth_errors_carry_their_rfc6750_challenge() -> None:
    resp = client_for(Unauthenticated("token expired: get a fresh one")).get("/error")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == ('Bearer realm="eventstream", error="invalid_token", '
                                                'error_description="token expired: get a fresh one"')
    resp = client_for(Forbidden("no subscribe on topic 't'", needed="subscribe:t")).get("/error")
    assert resp.status_code == 403
    assert 'error="insufficient_scope", scope="subscribe:t"' in resp.headers["www-authenticate"]
