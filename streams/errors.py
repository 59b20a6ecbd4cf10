"""One error tree for the service; the edge maps it to problem+json in one handler (app.problems).

Each error names its HTTP `status` and `title`; `field` names the request member at fault, and
`error_code` is the Confluent Schema Registry code the registry API answers with.
"""

from __future__ import annotations

from typing import Any

# Seconds a client should wait before retrying a retriable error (the Retry-After header).
RETRY_AFTER_S = 5


class StreamError(Exception):
    """Base of the service's errors; `retriable` says whether trying again may succeed."""

    retriable = False
    status = 500
    title = "Stream error"
    field: str | None = None
    error_code: int | None = None
    headers: dict[str, str] | None = None  # extra response headers (Retry-After, RateLimit...)
    extra: dict[str, Any] | None = None  # extra members of the problem+json body (app/problems.py)


class ValidationFailed(StreamError):
    """An event or request does not meet the envelope rules."""

    status = 422
    title = "Invalid event"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(StreamError):
    """An event is larger than the configured limit."""

    status = 413
    title = "Payload too large"


class LimitExceeded(StreamError):
    """A request goes past a configured bound; the message names the limit and the setting that sets it."""

    status = 400
    title = "Limit exceeded"

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        if status is not None:
            self.status = status


class CodecError(StreamError):
    """Bytes are not our wire format, or a record does not fit its schema."""

    status = 422
    title = "Serialization error"


class UnknownSchema(CodecError):
    """A record names a schema id the registry does not know."""

    status = 404
    title = "Unknown schema"


class BrokerUnavailable(StreamError):
    """Kafka did not answer in time; try again later."""

    retriable = True
    status = 503
    title = "Broker unavailable"


class TopicNotFound(StreamError):
    """The named topic does not exist."""

    status = 404
    title = "Topic not found"


class TopicExists(StreamError):
    """A topic with that name exists already."""

    status = 409
    title = "Topic exists"


class TopicProtected(StreamError):
    """The topic belongs to the service and cannot be changed through the API."""

    status = 403
    title = "Topic is internal"


class InvalidTopicConfig(StreamError):
    """A topic configuration was refused."""

    status = 422
    title = "Invalid topic configuration"


class SchemaIncompatible(StreamError):
    """A new schema version breaks the subject's compatibility rule."""

    status = 409
    title = "Incompatible schema"


class SchemaNotFound(StreamError):
    """A subject, version or schema id is unknown to the registry."""

    status = 404
    title = "Schema not found"
    error_code = 40401


def redact(servers: str) -> str:
    """Strip credentials from broker URLs before they reach a message."""
    out = []
    for part in servers.split(","):
        scheme, sep, rest = part.rpartition("://")
        if "@" in rest:
            rest = rest.split("@", 1)[1]
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)


class SubjectNotFound(SchemaNotFound):
    """The registry has no live version under that subject."""

    title = "Subject not found"
    error_code = 40401


class VersionNotFound(SchemaNotFound):
    """The subject exists but has no such version."""

    title = "Version not found"
    error_code = 40402


class SchemaIdNotFound(SchemaNotFound):
    """No schema is registered under that id."""

    title = "Schema id not found"
    error_code = 40403


class SubjectConfigNotFound(SchemaNotFound):
    """The subject has no compatibility level of its own."""

    title = "Subject config not found"
    error_code = 40408


class InvalidSchema(ValidationFailed):
    """A schema is not valid Avro, or is not Avro at all."""

    title = "Invalid schema"
    error_code = 42201


class InvalidVersion(ValidationFailed):
    """A version is neither a positive integer nor 'latest'."""

    title = "Invalid version"
    error_code = 42202


class InvalidCompatibilityLevel(ValidationFailed):
    """A compatibility level is not one the registry knows."""

    title = "Invalid compatibility level"
    error_code = 42203


class RegistryBusy(StreamError):
    """Concurrent writers kept winning the race for the registry log; try again."""

    retriable = True
    status = 503
    title = "Registry busy"
    error_code = 50001


class RoutingRulesInvalid(StreamError):
    """The routing rules file cannot be used; the message names the file and line."""

    status = 500
    title = "Invalid routing rules"


class DeadLetterNotFound(StreamError):
    """No DLQ entry sits at the given position."""

    status = 404
    title = "Dead letter not found"
