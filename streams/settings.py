"""One settings object for every process: env vars with prefix ES_, plus KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
Compression = Literal["snappy", "lz4", "zstd", "gzip", "none"]


class Settings(BaseSettings):
    """Configuration read from the environment; defaults run everything on 127.0.0.1."""

    model_config = SettingsConfigDict(env_prefix="ES_", extra="ignore")

    # Kafka connection: the standard variable name, so existing tooling and CI can set it.
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ES_KAFKA_BOOTSTRAP_SERVERS"),
    )
    client_id: str = "eventstream"
    # Topic names. Internal topics cannot be deleted through the HTTP API.
    topic_prefix: str = "es"
    ingress_topic: str = "es.ingress"
    dlq_topic: str = "es.dlq"
    default_topic: str = "es.events"
    schemas_topic: str = "_schemas"
    # Defaults for topics the service creates (partitions, replication factor, retention ms).
    default_partitions: int = Field(3, ge=1)
    default_replication_factor: int = Field(1, ge=1)
    default_retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1)
    # Producer: compression codec, linger (ms) and request timeout (ms).
    compression: Compression = "snappy"
    linger_ms: int = Field(2, ge=0)
    request_timeout_ms: int = Field(15_000, ge=1000)
    # Schema registry: compatibility level applied when a subject has none of its own.
    registry_compatibility: Literal[
        "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"
    ] = "BACKWARD"
    # Edge (HTTP): bind address, the largest accepted event (bytes), readiness probe timeout (s).
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    max_event_bytes: int = Field(1_000_000, ge=1024)
    max_batch_events: int = Field(10_000, ge=1)
    max_batch_bytes: int = Field(32_000_000, ge=1024)
    ready_timeout_s: float = Field(3.0, gt=0)
    # Durable connections (consumer groups per client): idle expiry (s) and commit interval (ms).
    connection_ttl_s: float = Field(7 * 24 * 3600, gt=0)
    connection_commit_interval_ms: int = Field(500, ge=10)
    connection_sweep_interval_s: float = Field(60, gt=0)
    # Where the Avro schemas live (schema files are the source of truth).
    schemas_dir: Path = ROOT / "schemas"

    # --- SSE edge: live streams, resume, fan-out (app/fanout/hub.py, app/fanout/catchup.py, app/routes/stream.py) ---
    # Concurrent streams per edge process; above it new streams get 503 with Retry-After.
    stream_max_clients: int = Field(10_000, ge=1)
    # Frames queued per client while its socket is full; past that it goes back to catch-up.
    stream_buffer_max_size: int = Field(1000, ge=1)
    # A client blocked (or out of the live tail after overflowing) longer than this (s) is closed.
    stream_slow_client_timeout_s: float = Field(30.0, gt=0)
    # Heartbeat comment interval (s) when a request names none; reconnect delay (ms) sent as `retry:`.
    stream_heartbeat_s: float = Field(15.0, gt=0)
    stream_retry_ms: int = Field(2000, ge=0)
    # Catch-up readers (one Kafka consumer each) shared by the clients that start behind the tail.
    stream_catchup_readers: int = Field(8, ge=1, le=256)
    # How long (ms) the broker may hold a tail or catch-up fetch: latency against idle round trips.
    stream_fetch_max_wait_ms: int = Field(5, ge=0, le=500)
    # A tail reader no stream uses is closed after this many seconds.
    stream_tail_idle_s: float = Field(30.0, ge=0)
    # Recent records per tailed topic kept decoded (about 2-3 KB each), so clients a little behind
    # (reconnects, slow readers) resume from memory instead of reading Kafka; 0 turns it off.
    stream_replay_records: int = Field(2000, ge=0)
    # Listen backlog of the edge's socket (capped by net.core.somaxconn): after an edge restart every
    # client reconnects at once, and SYNs dropped by a full queue come back only after 1, 3, 7... s.
    http_backlog: int = Field(4096, ge=64)
    # HMAC key of resume tokens and history cursors: set the same value on every edge process.
    stream_token_secret: SecretStr = Field(SecretStr("eventstream-dev-token-secret"), min_length=16)

    # --- Stream processing: the Faust worker (streams/worker/) ---
    # Routing rules (YAML or JSON); a malformed file stops the worker at start, naming the bad line.
    routes_file: Path = ROOT / "config" / "routes.yaml"
    # Deduplication on event id: window (s; 0 turns it off) between two records' timestamps, ids kept
    # per ingress partition at most (the oldest go first), and how often (s) expired ids are dropped.
    dedup_window_s: float = Field(24 * 3600, ge=0)
    dedup_max_ids: int = Field(1_000_000, ge=1)
    dedup_sweep_interval_s: float = Field(60.0, gt=0)
    # A destination write that fails is tried this many times in all, first backoff (ms, doubling, at
    # most 5 s), before the record goes to the DLQ.
    route_max_attempts: int = Field(5, ge=1)
    route_backoff_ms: int = Field(100, ge=0)
    # Live-path latency: producer linger (ms) and how long the broker may hold an empty fetch (ms).
    worker_linger_ms: int = Field(1, ge=0)
    worker_fetch_max_wait_ms: int = Field(10, ge=0, le=5000)
    # Offset commit interval (s), group session timeout (s; the broker's minimum is 6), and records
    # in flight (sent, not yet acknowledged) above which the agent waits.
    worker_commit_interval_s: float = Field(1.0, gt=0)
    worker_session_timeout_s: float = Field(10.0, ge=6)
    worker_max_inflight: int = Field(5000, ge=1)
    # After SIGTERM the worker exits with code 1 if draining, committing and leaving take longer (s).
    worker_shutdown_timeout_s: float = Field(30.0, gt=0)
    # A partition with records left but none arriving for this long (s) is read again from its
    # committed offset (streams/worker/app.py, PipelineService.unstick).
    worker_stall_timeout_s: float = Field(5.0, gt=0)
    # Records seen again after a crash: look this far back (s) in destinations for copies already
    # written, reading at most this many records per destination topic.
    recovery_scan_slack_s: float = Field(5.0, ge=0)
    recovery_scan_max_records: int = Field(1_000_000, ge=1)
    # Faust's local data (one subdirectory per app id), and how often (s) the worker logs its counters.
    worker_data_dir: Path = ROOT / ".run" / "worker"
    worker_stats_interval_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _internal_topics_differ(self) -> Settings:
        names = [self.ingress_topic, self.dlq_topic, self.schemas_topic]
        if len(set(names)) != len(names):
            raise ValueError(
                f"ingress_topic, dlq_topic and schemas_topic must differ, got {names!r}"
            )
        return self

    @property
    def connections_topic(self) -> str:
        """Return the compacted topic holding durable connection definitions."""
        return f"{self.topic_prefix}.internal.connections"

    @property
    def connection_group_prefix(self) -> str:
        """Return the prefix of durable connections' consumer group ids."""
        return f"{self.topic_prefix}.conn."

    @property
    def worker_app_id(self) -> str:
        """Return the Faust app id: the workers' consumer group and the prefix of their changelogs."""
        return f"{self.topic_prefix}.worker"

    @property
    def dlq_replays_topic(self) -> str:
        """Return the compacted topic that records which DLQ entries were replayed successfully."""
        return f"{self.topic_prefix}.internal.dlq-replays"

    @property
    def internal_topics(self) -> frozenset[str]:
        """Return topics the service owns and the API must not delete."""
        return frozenset({self.ingress_topic, self.dlq_topic, self.schemas_topic})

    def is_internal(self, topic: str) -> bool:
        """Tell whether a topic belongs to the service itself (registry, ingress, DLQ, changelogs)."""
        return (
            topic in self.internal_topics
            or topic.startswith("__")
            or topic.endswith("-changelog")
            or topic.startswith(f"{self.topic_prefix}.worker")
            or topic.startswith(f"{self.topic_prefix}.internal")
        )


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, read once."""
    return Settings()
