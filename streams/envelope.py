"""The event envelope: validation of what publishers send, and conversion to and from Avro records."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.errors import ValidationFailed

EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# CloudEvents context attributes (and `recipients`) that never go into `extensions`.
CORE = {"id", "source", "type", "subject", "time", "datacontenttype", "data", "data_base64", "tags",
        "extensions", "specversion", "recipients"}
MAX_RECIPIENTS = 100  # entries of `recipients`
MAX_RECIPIENT_CHARS = 256  # characters per entry (a JWT `sub` or a durable connection id)


def is_json_type(content_type: str) -> bool:
    """Tell whether `data` of this content type is JSON (stored as JSON text)."""
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct in ("application/json", "text/json") or ct.endswith("+json")


class Event(BaseModel):
    """An event as publishers send it: CloudEvents attributes plus tags and string extensions."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=256)
    subject: str | None = Field(default=None, max_length=1024)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: str = "application/json"
    data: Any = None
    data_base64: str | None = None
    tags: list[str] = Field(default_factory=list)
    extensions: dict[str, str] = Field(default_factory=dict)
    # Targeted delivery: only streams of these principals (JWT `sub`) or durable connection ids get the event.
    recipients: list[str] | None = Field(
        default=None, max_length=MAX_RECIPIENTS,
        description="Targeted delivery: only streams of these principals (JWT `sub`) or durable connection ids "
                    f"receive the event, and history shows it only to them and to admin (1-{MAX_RECIPIENTS} "
                    f"entries of 1-{MAX_RECIPIENT_CHARS} characters). Leave it out to send to every subscriber.")
    specversion: str = "1.0"

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("recipients must not be empty; leave it out to send the event to every subscriber")
        for name in value:
            if not name or len(name) > MAX_RECIPIENT_CHARS:
                raise ValueError(f"each recipient must be 1-{MAX_RECIPIENT_CHARS} characters, got {len(name)}")
        return list(dict.fromkeys(value))  # duplicates dropped, order kept

    @field_validator("specversion")
    @classmethod
    def _spec(cls, value: str) -> str:
        if value != "1.0":
            raise ValueError(f"only CloudEvents specversion '1.0' is supported, got {value!r}")
        return value

    @model_validator(mode="after")
    def _extras_become_extensions(self) -> Event:
        extra = self.__pydantic_extra__ or {}
        for name, value in list(extra.items()):
            if not EXTENSION_NAME.match(name):
                raise ValueError(
                    f"unknown attribute {name!r}: extension names must be 1-20 lowercase letters or digits"
                )
            if isinstance(value, dict | list):
                raise ValueError(f"extension attribute {name!r} must be a string, number or boolean")
            self.extensions[name] = value if isinstance(value, str) else orjson.dumps(value).decode()
        extra.clear()
        if self.data is not None and self.data_base64 is not None:
            raise ValueError("give either data or data_base64, not both")
        if self.data_base64 is not None:
            try:
                base64.b64decode(self.data_base64, validate=True)
            except ValueError as exc:
                raise ValueError(f"data_base64 is not valid base64: {exc}") from None
        return self

    def to_record(self) -> dict[str, Any]:
        """Return the Avro record for this event (data as JSON text, or bytes for binary payloads)."""
        if self.data_base64 is not None:
            data: str | bytes | None = base64.b64decode(self.data_base64)
        elif self.data is None:
            data = None
        elif is_json_type(self.datacontenttype):
            data = orjson.dumps(self.data).decode()
        elif isinstance(self.data, str):
            data = self.data
        else:
            raise ValidationFailed(
                f"data for datacontenttype {self.datacontenttype!r} must be a string "
                "(or use data_base64 for binary)", field="data")
        return {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "data": data,
            "tags": list(self.tags),
            "extensions": dict(self.extensions),
            "recipients": None if self.recipients is None else list(self.recipients),
        }


def parse_event(raw: Any, *, where: str = "") -> Event:
    """Validate one event from JSON-like input, raising ValidationFailed naming the bad field."""
    if isinstance(raw, Event):
        return raw
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where or 'event'} must be a JSON object, got {type(raw).__name__}",
                               field=where or None)
    try:
        return Event.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        field = f"{where}.{loc}" if where and loc else (where or loc or None)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = f"required attribute {loc!r} is missing"
        raise ValidationFailed(f"{field}: {msg}" if field else msg, field=field) from None


def record_to_json(record: dict[str, Any]) -> dict[str, Any]:
    """Return a decoded Avro record as a JSON-ready CloudEvents dict (time as ISO-8601 UTC)."""
    data = record.get("data")
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": record["id"],
        "source": record["source"],
        "type": record["type"],
        "subject": record.get("subject"),
        "time": iso(record["time"]),
        "datacontenttype": record.get("datacontenttype", "application/json"),
        "tags": record.get("tags") or [],
        "extensions": record.get("extensions") or {},
    }
    if record.get("recipients") is not None:  # only targeted events carry the key (records of schema v1 never do)
        out["recipients"] = list(record["recipients"])
    if isinstance(data, bytes):
        out["data_base64"] = base64.b64encode(data).decode()
    elif data is not None and is_json_type(out["datacontenttype"]):
        out["data"] = orjson.loads(data)
    else:
        out["data"] = data
    return out


def iso(value: datetime) -> str:
    """Format a datetime as ISO-8601 UTC with a Z suffix."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
