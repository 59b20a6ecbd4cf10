"""The Confluent Schema Registry REST API (the commonly used, Avro-only subset) over SchemaRegistry.

Mounted by the edge under /api/v1/registry, so Confluent clients use that URL as `url`.
Errors are answered by the app's one handler (`app.problems.install`): on these routes the
problem+json body carries Confluent's `error_code` and `message` as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.auth import AdminOnly
from streams.errors import BrokerUnavailable, InvalidSchema, SchemaNotFound, ValidationFailed
from streams.schema.registry import SchemaRegistry

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
T = TypeVar("T")


class RegistryJSON(JSONResponse):
    """JSON in the media type Confluent's registry answers with."""

    media_type = CONTENT_TYPE


class RegistryRoute(APIRoute):
    """A route whose error bodies carry Confluent's `error_code` and `message` (see app.problems)."""

    confluent_errors = True


class NoAssociations(SchemaNotFound):
    """The registry keeps no resource associations (clients then fall back to subject names)."""

    title = "No associations"
    error_code = 40401


router = APIRouter(route_class=RegistryRoute, default_response_class=RegistryJSON)


def _registry(request: Request) -> SchemaRegistry:
    registry: SchemaRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None or not registry.running:
        raise BrokerUnavailable("the schema registry is not running yet")
    return registry


async def _fresh(registry: SchemaRegistry, lookup: Callable[[], T]) -> T:
    """Answer from memory; on a miss, read the topic to its end once (another process may have written)."""
    try:
        return lookup()
    except SchemaNotFound:
        await registry.catch_up()
        return lookup()


async def _schema_body(request: Request) -> str:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ValidationFailed(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise InvalidSchema('request body must be a JSON object with a "schema" string', field="schema")
    schema_type = body.get("schemaType") or "AVRO"
    if str(schema_type).upper() != "AVRO":
        raise InvalidSchema(
            f"schemaType {schema_type!r} is not supported: this registry stores AVRO schemas only",
            field="schemaType",
        )
    if body.get("references"):
        raise InvalidSchema("schema references are not supported by this registry", field="references")
    return body["schema"]


def _raw(text: str | None) -> Response:
    return Response(text, media_type=CONTENT_TYPE)


# ---------------------------------------------------------------------- schemas by id


@router.get("/schemas/types")
async def schema_types() -> list[str]:
    """List the schema types this registry accepts."""
    return ["AVRO"]


@router.get("/schemas/ids/{schema_id}")
async def schema_by_id(request: Request, schema_id: int, subject: str | None = None) -> dict[str, Any]:
    """Return the schema registered under an id (`subject` is accepted and ignored)."""
    return {"schema": await _registry(request).fetch_schema(schema_id)}


@router.get("/schemas/ids/{schema_id}/schema")
async def raw_schema_by_id(request: Request, schema_id: int) -> Response:
    """Return the schema text registered under an id, unwrapped."""
    return _raw(await _registry(request).fetch_schema(schema_id))


@router.get("/schemas/ids/{schema_id}/versions")
async def versions_of_id(request: Request, schema_id: int) -> list[dict[str, Any]]:
    """List the subject versions that use a schema id."""
    registry = _registry(request)
    usages = await _fresh(registry, lambda: registry.usages(schema_id))
    return [{"subject": s, "version": v} for s, v in usages]


@router.get("/schemas/ids/{schema_id}/subjects")
async def subjects_of_id(request: Request, schema_id: int) -> list[str]:
    """List the subjects that use a schema id."""
    registry = _registry(request)
    usages = await _fresh(registry, lambda: registry.usages(schema_id))
    return sorted({s for s, _ in usages})


# ---------------------------------------------------------------------- subjects
# Subjects arrive percent-encoded and may contain '/', hence `:path` and the order of the routes:
# the longest patterns first, the bare /subjects/{subject} last.


@router.get("/subjects")
async def subjects(request: Request) -> list[str]:
    """List the subjects with at least one live version."""
    return _registry(request).subjects()


@router.get("/subjects/{subject:path}/versions/{version}/schema")
async def raw_version_schema(request: Request, subject: str, version: str) -> Response:
    """Return the schema text of one version ('latest' or a number), unwrapped."""
    registry = _registry(request)
    found = await _fresh(registry, lambda: registry.get_version(subject, version))
    return _raw(found["schema"])


@router.get("/subjects/{subject:path}/versions/{version}")
async def get_version(request: Request, subject: str, version: str) -> dict[str, Any]:
    """Return {subject, version, id, schema} of one version ('latest' or a number)."""
    registry = _registry(request)
    return await _fresh(registry, lambda: registry.get_version(subject, version))


@router.get("/subjects/{subject:path}/versions")
async def versions(request: Request, subject: str) -> list[int]:
    """List the live versions of a subject."""
    registry = _registry(request)
    return await _fresh(registry, lambda: registry.versions(subject))


@router.post("/subjects/{subject:path}/versions", dependencies=[AdminOnly])  # writes are admin only
async def register(request: Request, subject: str, normalize: bool = False) -> dict[str, int]:
    """Register a schema under a subject; the same schema gets back its existing id."""
    schema = await _schema_body(request)
    return {"id": await _registry(request).register(subject, schema)}


@router.post("/subjects/{subject:path}")
async def lookup(
    request: Request, subject: str, normalize: bool = False, deleted: bool = False
) -> dict[str, Any]:
    """Tell whether a schema is registered under a subject: {subject, version, id, schema}."""
    schema = await _schema_body(request)
    registry = _registry(request)
    return await _fresh(registry, lambda: registry.lookup(subject, schema))


@router.delete("/subjects/{subject:path}", dependencies=[AdminOnly])
async def delete_subject(request: Request, subject: str, permanent: bool = False) -> list[int]:
    """Soft-delete a subject and return the versions deleted."""
    if permanent:
        raise ValidationFailed("permanent deletes are not supported; subjects are only soft-deleted",
                               field="permanent")
    return await _registry(request).delete_subject(subject)


# ---------------------------------------------------------------------- compatibility


@router.post("/compatibility/subjects/{subject:path}/versions/{version}")
async def compatible_with_version(request: Request, subject: str, version: str, normalize: bool = False,
                                  verbose: bool = False) -> dict[str, Any]:
    """Test a schema against one version of a subject under the subject's level."""
    schema = await _schema_body(request)
    registry = _registry(request)
    ok, messages = await _fresh(registry, lambda: registry.check_compatibility(subject, schema, version))
    return {"is_compatible": ok, "messages": messages} if verbose else {"is_compatible": ok}


@router.post("/compatibility/subjects/{subject:path}/versions")
async def compatible_with_subject(request: Request, subject: str, normalize: bool = False,
                                  verbose: bool = False) -> dict[str, Any]:
    """Test a schema against the versions the subject's level names (latest, or all if transitive)."""
    schema = await _schema_body(request)
    ok, messages = _registry(request).check_compatibility(subject, schema, None)
    return {"is_compatible": ok, "messages": messages} if verbose else {"is_compatible": ok}


# ---------------------------------------------------------------------- config


async def _level_body(request: Request) -> str:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ValidationFailed(f"request body is not JSON: {exc}") from exc
    level = body.get("compatibility") or body.get("compatibilityLevel") if isinstance(body, dict) else None
    if not isinstance(level, str):
        raise ValidationFailed('request body must be a JSON object with a "compatibility" string',
                               field="compatibility")
    return level


@router.get("/config")
async def get_global_config(request: Request) -> dict[str, str]:
    """Return the global compatibility level."""
    return {"compatibilityLevel": _registry(request).get_config()}


@router.put("/config", dependencies=[AdminOnly])
async def set_global_config(request: Request) -> dict[str, str]:
    """Set the global compatibility level."""
    level = await _level_body(request)
    return {"compatibility": await _registry(request).set_config(level)}


@router.get("/config/{subject:path}")
async def get_subject_config(
    request: Request, subject: str, default_to_global: bool = Query(False, alias="defaultToGlobal")
) -> dict[str, str]:
    """Return a subject's own level; with defaultToGlobal, fall back to the global one."""
    registry = _registry(request)
    level = await _fresh(registry, lambda: registry.get_config(subject, fallback=default_to_global))
    return {"compatibilityLevel": level}


@router.put("/config/{subject:path}", dependencies=[AdminOnly])
async def set_subject_config(request: Request, subject: str) -> dict[str, str]:
    """Set a subject's compatibility level."""
    level = await _level_body(request)
    return {"compatibility": await _registry(request).set_config(level, subject)}


# ---------------------------------------------------------------------- associations


@router.get("/associations/resources/{namespace}/{resource:path}")
async def associations(namespace: str, resource: str) -> None:
    """Answer 404: no associations are kept, so clients fall back to `<topic>-value` subjects."""
    raise NoAssociations(f"no associations are kept for {resource!r}; use the subject name strategy")

