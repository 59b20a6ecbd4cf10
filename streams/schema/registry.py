"""Schema registry kept in a compacted Kafka topic (Confluent's `_schemas` layout), served from memory.

Every process reads the whole topic into memory and keeps tailing it. Several processes may write:
a writer appends its record, waits until its own reader has applied that offset, then checks that
its record won. `_State.apply` settles conflicts the same way in every process: the first record
in the log wins, later records that contradict it are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from streams.errors import (
    BrokerUnavailable,
    InvalidVersion,
    RegistryBusy,
    SchemaIdNotFound,
    SchemaIncompatible,
    StreamError,
    SubjectConfigNotFound,
    SubjectNotFound,
    ValidationFailed,
    VersionNotFound,
    redact,
)
from streams.kafka import clients
from streams.schema.compat import ParsedSchema, check_level, incompatibilities, parse_schema
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8  # register() tries this many times when other writers keep winning the race
BACKOFF_S = 0.01  # first retry waits up to this long (random), doubling per attempt, so racers spread out
TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
VersionRef = int | str | Literal["latest"]


@dataclass
class _Entry:
    """One subject version: the schema id it names, and whether it was soft-deleted."""

    id: int
    deleted: bool = False


class _State:
    """Registry contents rebuilt from the log; `apply` decides conflicts (first record wins)."""

    def __init__(self) -> None:
        self.schemas: dict[int, ParsedSchema] = {}  # id -> schema as first registered
        self.ids: dict[str, int] = {}  # canonical form -> id
        self.subjects: dict[str, dict[int, _Entry]] = {}
        self.config: dict[str | None, str] = {}
        self.max_id = 0
        self._parsed: dict[str, ParsedSchema] = {}

    def apply(self, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        """Apply one record of the registry topic."""
        keytype = key.get("keytype")
        if keytype == "SCHEMA":
            self._apply_schema(key, value)
        elif keytype == "CONFIG":
            if value is None:
                self.config.pop(key.get("subject"), None)
            else:
                self.config[key.get("subject")] = check_level(value["compatibilityLevel"])
        elif keytype == "DELETE_SUBJECT" and value is not None:
            for version, entry in self.subjects.get(value["subject"], {}).items():
                if version <= value["version"]:
                    entry.deleted = True

    def _apply_schema(self, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        subject, version = key["subject"], int(key["version"])
        if value is None:  # tombstone: a hard delete
            self.subjects.get(subject, {}).pop(version, None)
            return
        if value.get("schemaType", "AVRO") != "AVRO":
            return
        schema_id = int(value["id"])
        parsed = self._parse(value["schema"])
        taken = self.subjects.get(subject, {}).get(version)
        bound = self.schemas.get(schema_id)
        if (
            (taken is not None and taken.id != schema_id)
            or (bound is not None and bound.canonical != parsed.canonical)
            or self.ids.get(parsed.canonical, schema_id) != schema_id
        ):
            log.debug("Ignored record %s version %d id %d: an earlier one won.", subject, version, schema_id)
            return
        if bound is None:
            self.schemas[schema_id] = parsed
            self.ids[parsed.canonical] = schema_id
            self.max_id = max(self.max_id, schema_id)
        entry = taken or self.subjects.setdefault(subject, {}).setdefault(version, _Entry(schema_id))
        entry.deleted = bool(value.get("deleted", False))

    def _parse(self, text: str) -> ParsedSchema:
        parsed = self._parsed.get(text)
        if parsed is None:
            parsed = self._parsed[text] = parse_schema(text)
        return parsed

    def live(self, subject: str) -> dict[int, _Entry]:
        """Return the subject's versions that are not deleted, oldest first."""
        versions = self.subjects.get(subject, {})
        return {v: e for v, e in sorted(versions.items()) if not e.deleted}

    def find(self, subject: str, canonical: str) -> tuple[int, _Entry] | None:
        """Return the live (version, entry) of a schema under a subject, if any."""
        schema_id = self.ids.get(canonical)
        for version, entry in self.live(subject).items():
            if entry.id == schema_id:
                return version, entry
        return None


class SchemaRegistry:
    """Avro schema registry backed by `settings.schemas_topic`; lookups are answered from memory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._topic = settings.schemas_topic
        self._tp = TopicPartition(self._topic, 0)
        self._state = _State()
        self._position = 0  # next offset the reader will apply
        self._advanced = asyncio.Condition()
        self._write_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._timeout_s = settings.request_timeout_ms / 1000
        self._ready = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the topic if missing, read it to the end, and keep tailing it."""
        if self._reader is not None:
            return
        servers = self.settings.kafka_bootstrap_servers
        self._state, self._position = _State(), 0  # a restarted instance rebuilds from the log too
        log.info("Starting schema registry on topic %s at %s.", self._topic, redact(servers))
        try:
            await self._ensure_topic()
            self._producer = clients.producer(self.settings, "registry", acks="all", enable_idempotence=True)
            await self._producer.start()
            self._consumer = clients.reader(self.settings, "registry", auto_offset_reset="earliest",
                                            fetch_max_wait_ms=200)
            await self._consumer.start()
            self._consumer.assign([self._tp])
            await self._consumer.seek_to_beginning(self._tp)
            self._reader = asyncio.create_task(self._read_loop(), name=f"registry-reader-{self._topic}")
            await self.catch_up()
            self._ready = True
        except (KafkaError, OSError) as exc:
            await self.stop()
            raise BrokerUnavailable(f"registry cannot reach Kafka at {redact(servers)}: {exc}") from exc
        except BaseException:
            await self.stop()
            raise
        log.info("Schema registry started with %d schemas.", len(self._state.schemas))

    async def stop(self) -> None:
        """Stop tailing the topic and close the Kafka clients; calling it again does nothing."""
        reader, self._reader, self._ready = self._reader, None, False
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await clients.close_all(self._consumer, self._producer)
        if self._consumer is not None or self._producer is not None:
            log.info("Schema registry stopped.")
        self._consumer = self._producer = None

    @property
    def running(self) -> bool:
        """Tell whether start() has finished and stop() has not been called."""
        return self._reader is not None and self._ready

    async def __aenter__(self) -> SchemaRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _ensure_topic(self) -> None:
        admin = clients.admin(self.settings, "registry-admin")
        await admin.start()
        try:
            brokers = len((await admin.describe_cluster())["brokers"])
            replication = min(self.settings.default_replication_factor, max(brokers, 1))
            topic = NewTopic(self._topic, 1, replication, topic_configs={"cleanup.policy": "compact"})
            response = (await admin.create_topics([topic])).to_object()
            error = response["topic_errors"][0]
            if error["error_code"] == 0:
                log.info("Created registry topic %s (replication %d, compacted).", self._topic, replication)
            elif error["error_code"] != TOPIC_EXISTS:
                raise BrokerUnavailable(f"cannot create topic {self._topic}: {error['error_message']}")
        finally:
            await admin.close()

    # ------------------------------------------------------------------ the log

    async def _read_loop(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(self._tp, timeout_ms=1000)
                for record in batches.get(self._tp, []):
                    self._apply(record.key, record.value)
                    self._position = record.offset + 1
                # Compaction can leave gaps at the end of the log; the fetch position skips them.
                self._position = max(self._position, await self._consumer.position(self._tp))
            except KafkaError as exc:
                log.warning("Registry reader got %s; retrying in 1 s.", exc)
                await asyncio.sleep(1)
            except Exception:  # keep tailing: a dead reader would leave every writer waiting
                log.exception("Registry reader failed; retrying in 1 s.")
                await asyncio.sleep(1)
            async with self._advanced:
                self._advanced.notify_all()

    def _apply(self, raw_key: bytes | None, raw_value: bytes | None) -> None:
        try:
            key = json.loads(raw_key or b"null")
            if isinstance(key, dict):
                self._state.apply(key, None if raw_value is None else json.loads(raw_value))
        except (ValueError, KeyError, TypeError, StreamError) as exc:
            log.warning("Skipped a malformed registry record %r: %s", raw_key, exc)

    async def _wait_position(self, offset: int) -> None:
        try:
            async with asyncio.timeout(self._timeout_s), self._advanced:
                await self._advanced.wait_for(lambda: self._position >= offset)
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"registry reader did not reach offset {offset} of {self._topic} in {self._timeout_s:g} s"
            ) from exc

    async def catch_up(self) -> None:
        """Wait until every record written to the topic before this call has been applied."""
        consumer = self._started()[1]
        try:
            end = (await consumer.end_offsets([self._tp]))[self._tp]
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read the end of {self._topic}: {exc}") from exc
        await self._wait_position(end)

    async def _send(self, key: dict[str, Any], value: dict[str, Any]) -> None:
        producer = self._started()[0]
        try:
            meta = await producer.send_and_wait(
                self._topic, json.dumps(value).encode(), key=json.dumps(key).encode(), partition=0
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot write to {self._topic}: {exc}") from exc
        await self._wait_position(meta.offset + 1)

    def _started(self) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
        if self._producer is None or self._consumer is None:
            raise StreamError("schema registry is not started; call start() first")
        return self._producer, self._consumer

    async def _send_version(
        self, subject: str, version: int, schema_id: int, text: str, deleted: bool
    ) -> None:
        key = {"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1}
        value = {"subject": subject, "version": version, "id": schema_id, "schema": text, "deleted": deleted}
        await self._send(key, value)

    # ------------------------------------------------------------------ writes

    async def register(self, subject: str, schema_str: str) -> int:
        """Register a schema under a subject and return its global id (the existing one if known)."""
        _check_subject(subject)
        parsed = parse_schema(schema_str)
        async with self._write_lock:
            await self.catch_up()
            for attempt in range(1, MAX_ATTEMPTS + 1):
                found = self._state.find(subject, parsed.canonical)
                if found is not None:
                    return found[1].id
                problems = self._problems(subject, parsed)
                if problems:
                    raise SchemaIncompatible(f"subject {subject!r}: " + "; ".join(problems))
                schema_id = self._state.ids.get(parsed.canonical) or self._state.max_id + 1
                version = max(self._state.subjects.get(subject, {}), default=0) + 1
                known = self._state.schemas.get(schema_id)
                text = known.text if known is not None else parsed.text
                await self._send_version(subject, version, schema_id, text, deleted=False)
                winner = self._state.subjects.get(subject, {}).get(version)
                if winner is not None and winner.id != schema_id:
                    # An earlier record took our key; write it again so that compaction keeps it, not ours.
                    text = self._state.schemas[winner.id].text
                    await self._send_version(subject, version, winner.id, text, winner.deleted)
                # Compare schemas, not ids: a rival who saw the same state picked the same new id.
                if winner is not None and self._state.ids.get(parsed.canonical) == winner.id:
                    log.info("Registered schema id %d as %s version %d.", winner.id, subject, version)
                    return winner.id
                log.info("Lost the race for %s version %d (attempt %d); retrying.", subject, version, attempt)
                await asyncio.sleep(random.uniform(0, BACKOFF_S * 2**attempt))
                await self.catch_up()
        raise RegistryBusy(f"could not register under {subject!r}: other writers won {MAX_ATTEMPTS} times")

    async def set_config(self, level: str, subject: str | None = None) -> str:
        """Set the compatibility level of one subject, or the global one; return the level."""
        level = check_level(level)
        if subject is not None:
            _check_subject(subject)
        await self._send({"keytype": "CONFIG", "subject": subject, "magic": 0}, {"compatibilityLevel": level})
        return level

    async def delete_subject(self, subject: str) -> list[int]:
        """Soft-delete every live version of a subject; return the versions deleted."""
        async with self._write_lock:
            await self.catch_up()
            versions = self.versions(subject)
            for version in versions:
                entry = self._state.subjects[subject][version]
                text = self._state.schemas[entry.id].text
                await self._send_version(subject, version, entry.id, text, deleted=True)
        log.info("Deleted subject %s (versions %s).", subject, versions)
        return versions

    # ------------------------------------------------------------------ reads

    def schema_by_id(self, schema_id: int) -> str | None:
        """Return the schema text registered under an id, or None (memory only, no I/O)."""
        parsed = self._state.schemas.get(schema_id)
        return parsed.text if parsed is not None else None

    async def fetch_schema(self, schema_id: int) -> str:
        """Return the schema text of an id, reading the topic to its end once if it is unknown."""
        text = self.schema_by_id(schema_id)
        if text is None:
            await self.catch_up()
            text = self.schema_by_id(schema_id)
        if text is None:
            raise SchemaIdNotFound(f"schema id {schema_id} is not registered")
        return text

    def subjects(self) -> list[str]:
        """Return the subjects that have at least one live version, sorted."""
        return sorted(s for s in self._state.subjects if self._state.live(s))

    def versions(self, subject: str) -> list[int]:
        """Return the live versions of a subject, oldest first."""
        versions = list(self._state.live(subject))
        if not versions:
            raise SubjectNotFound(f"subject {subject!r} has no registered schema")
        return versions

    def get_version(self, subject: str, version: VersionRef = "latest") -> dict[str, Any]:
        """Return {subject, version, id, schema} of one live version ('latest', -1 or a number)."""
        number = parse_version(version)
        live = self._state.live(subject)
        if not live:
            raise SubjectNotFound(f"subject {subject!r} has no registered schema")
        if number == -1:
            number = max(live)
        if number not in live:
            raise VersionNotFound(f"subject {subject!r} has no version {number}; it has {list(live)}")
        schema_id = live[number].id
        text = self.schema_by_id(schema_id)
        return {"subject": subject, "version": number, "id": schema_id, "schema": text}

    def lookup(self, subject: str, schema_str: str) -> dict[str, Any]:
        """Return {subject, version, id, schema} if this schema is a live version of the subject."""
        parsed = parse_schema(schema_str)
        if not self._state.live(subject):
            raise SubjectNotFound(f"subject {subject!r} has no registered schema")
        found = self._state.find(subject, parsed.canonical)
        if found is None:
            raise SchemaIdNotFound(f"this schema is not registered under subject {subject!r}")
        return self.get_version(subject, found[0])

    def usages(self, schema_id: int) -> list[tuple[str, int]]:
        """Return the live (subject, version) pairs that name a schema id."""
        if schema_id not in self._state.schemas:
            raise SchemaIdNotFound(f"schema id {schema_id} is not registered")
        return [(s, v) for s in sorted(self._state.subjects) for v, e in self._state.live(s).items()
                if e.id == schema_id]

    def check_compatibility(
        self, subject: str, schema_str: str, version: VersionRef | None = "latest"
    ) -> tuple[bool, list[str]]:
        """Tell whether a schema could be registered: against one version, or (None) as the level says."""
        parsed = parse_schema(schema_str)
        empty_latest = version is not None and parse_version(version) == -1 and not self._state.live(subject)
        if version is None or empty_latest:  # as Confluent: "latest" of an empty subject accepts anything
            problems = self._problems(subject, parsed)
        else:
            found = self.get_version(subject, version)
            old = self._state.schemas[found["id"]].avro
            problems = incompatibilities(
                parsed.avro, [(found["version"], old)], self.get_config(subject), all_given=True
            )
        return not problems, problems

    def get_config(self, subject: str | None = None, *, fallback: bool = True) -> str:
        """Return the subject's compatibility level, else (if `fallback`) the global one."""
        config = self._state.config
        if subject is not None and subject in config:
            return config[subject]
        if subject is not None and not fallback:
            raise SubjectConfigNotFound(f"subject {subject!r} has no compatibility level of its own")
        return config.get(None, self.settings.registry_compatibility)

    def _problems(self, subject: str, parsed: ParsedSchema) -> list[str]:
        live = [(v, self._state.schemas[e.id].avro) for v, e in self._state.live(subject).items()]
        return incompatibilities(parsed.avro, live, self.get_config(subject))


def parse_version(version: VersionRef) -> int:
    """Return a version number, with -1 for 'latest'; raise InvalidVersion for anything else."""
    number: object = version
    if isinstance(version, str):
        text = version.strip().lower()
        number = -1 if text == "latest" else int(text) if re.fullmatch(r"-?[0-9]+", text) else None
    if isinstance(number, bool) or not isinstance(number, int) or (number < 1 and number != -1):
        raise InvalidVersion(f"version must be a positive integer or 'latest', got {version!r}",
                             field="version")
    return number


def _check_subject(subject: str) -> None:
    if not subject or not subject.strip() or any(ord(c) < 32 for c in subject):
        raise ValidationFailed(f"subject must be non-empty printable text, got {subject!r}", field="subject")
