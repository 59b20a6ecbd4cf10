"""One settings object for every process: env vars with prefix ES_, plus KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import orjson
from limits import parse_many
from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
Compression = Literal["snappy", "lz4", "zstd", "gzip", "none"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# Topic configs the HTTP API accepts in a create request (ES_TOPIC_ALLOWED_CONFIGS, comma-separated).
TOPIC_CONFIGS = ("cleanup.policy,compression.type,delete.retention.ms,max.compaction.lag.ms,max.message.bytes,"
                 "message.timestamp.type,min.cleanable.dirty.ratio,min.compaction.lag.ms,min.insync.replicas,"
                 "retention.bytes,retention.ms,segment.bytes,segment.ms")


def _kafka(name: str) -> AliasChoices:
    """Accept a Kafka connection variable by its standard name, and with the ES_ prefix too."""
    return AliasChoices(name, f"ES_{name}")


class Settings(BaseSettings):
    """Configuration read from the environment; defaults run everything on 127.0.0.1."""

    # Errors never echo the input: it holds KAFKA_SASL_PASSWORD and other secrets.
    model_config = SettingsConfigDict(env_prefix="ES_", extra="ignore", hide_input_in_errors=True)

    # Kafka connection: the standard variable name, so existing tooling and CI can set it.
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ES_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # Kafka security, un-prefixed like KAFKA_BOOTSTRAP_SERVERS and used by every client the service
    # builds (streams/kafka/clients.py): SASL (PLAIN or SCRAM) and/or TLS. CA, certificate and key are
    # PEM files; without a CA file the system's trust store is used.
    kafka_security_protocol: SecurityProtocol = Field("PLAINTEXT", validation_alias=_kafka("KAFKA_SECURITY_PROTOCOL"))
    kafka_sasl_mechanism: SaslMechanism = Field("PLAIN", validation_alias=_kafka("KAFKA_SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(None, validation_alias=_kafka("KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias=_kafka("KAFKA_SASL_PASSWORD"))
    kafka_ssl_cafile: Path | None = Field(None, validation_alias=_kafka("KAFKA_SSL_CAFILE"))
    kafka_ssl_certfile: Path | None = Field(None, validation_alias=_kafka("KAFKA_SSL_CERTFILE"))
    kafka_ssl_keyfile: Path | None = Field(None, validation_alias=_kafka("KAFKA_SSL_KEYFILE"))
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
    # Topics created over HTTP: at most this many partitions (128 keeps every single-topic resume token
    # and history cursor under the token size limit, app/fanout/tokens.py), and only these config keys.
    topic_max_partitions: int = Field(128, ge=1, le=10_000)
    topic_allowed_configs: str = TOPIC_CONFIGS
    # Producer: compression codec, linger (ms) and request timeout (ms). Linger 0 still batches under load
    # (aiokafka keeps one request in flight per broker and fills the next batch meanwhile) and halves the
    # end-to-end p50 at 10 events/s (bench/e2e_latency.py; README "Benchmarks").
    compression: Compression = "snappy"
    linger_ms: int = Field(0, ge=0)
    request_timeout_ms: int = Field(15_000, ge=1000)
    # Publish: seconds a publish waits for Kafka's acknowledgement before it answers 503 (the event may
    # still be written later; a retry with the same id is deduplicated by the worker).
    publish_timeout_s: float = Field(5.0, gt=0)
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
    # Request limits enforced before a route runs (app/request_size.py): total bytes of the request
    # line and headers (431 above it) and of a body (413 above it).
    http_max_header_bytes: int = Field(65_536, ge=4096)
    http_max_body_bytes: int = Field(33_554_432, ge=1024)
    # Rate limits per principal (the token's `sub`, or the client address with ES_AUTH=off), in the
    # `limits` notation ("1000/second", "600/minute", "10/second;100/minute"): events published (a batch
    # of 100 counts 100) and streams opened; past them 429 with Retry-After and RateLimit headers.
    rate_limit_publish: str = "1000/second"
    rate_limit_stream_opens: str = "600/minute"
    # Where the counts live: memory:// (per edge) or redis://host:port (shared by every edge).
    rate_limit_storage: str = "memory://"
    # Streams one principal may hold open on one edge at once (429 above it).
    max_streams_per_principal: int = Field(1000, ge=1)
    # Durable connections (consumer groups per client): idle expiry (s) and commit interval (ms).
    connection_ttl_s: float = Field(7 * 24 * 3600, gt=0)
    connection_commit_interval_ms: int = Field(500, ge=10)
    connection_sweep_interval_s: float = Field(60, gt=0)
    # Shared connections (mode=shared): concurrent streams of one connection, cluster-wide, before 409; and the
    # group session of each stream's consumer (ms; a stream whose edge died hands its partitions over after it).
    connection_max_members: int = Field(16, ge=1, le=1000)
    connection_member_session_timeout_ms: int = Field(10_000, ge=6_000, le=300_000)
    # Where the Avro schemas live (schema files are the source of truth).
    schemas_dir: Path = ROOT / "schemas"

    # --- SSE edge: live streams, resume, fan-out (app/fanout/hub.py, app/fanout/catchup.py, app/routes/stream.py) ---
    # Concurrent streams per edge process; above it new streams get 503 with Retry-After.
    stream_max_clients: int = Field(10_000, ge=1)
    # Frames queued per client while its socket is full; past that it goes back to catch-up.
    stream_buffer_max_size: int = Field(1000, ge=1)
    # ... and bytes queued per client (durable connections too, whatever their bufferMaxSize).
    stream_buffer_max_bytes: int = Field(4 * 1024 * 1024, ge=65_536)
    # Distinct filters (filter groups) one edge serves at once; a new filter past it gets 503.
    stream_max_filter_groups: int = Field(1000, ge=1)
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
    # How often (s) tails look for partitions added to their topic (also at once when a token names more).
    stream_metadata_refresh_s: float = Field(30.0, gt=0)
    # Recent records per tailed topic kept decoded (about 2-3 KB each), so clients a little behind
    # (reconnects, slow readers) resume from memory instead of reading Kafka; 0 turns it off.
    stream_replay_records: int = Field(2000, ge=0)
    # Under uvicorn, write event frames straight to the server's transport (half the CPU per delivery);
    # false sends every frame through plain ASGI `send` (app/sse/writer.py `direct_path` says which applies).
    stream_direct_writes: bool = True
    # Listen backlog of the edge's socket (capped by net.core.somaxconn): after an edge restart every
    # client reconnects at once, and SYNs dropped by a full queue come back only after 1, 3, 7... s.
    http_backlog: int = Field(4096, ge=64)
    # HMAC key of resume tokens and history cursors: set the same value on every edge process.
    stream_token_secret: SecretStr = Field(SecretStr("eventstream-dev-token-secret"), min_length=16)
    # Stream admin (app/directory/): each edge publishes its open streams to a compacted presence topic every
    # `presence_interval_s` (s); an entry not refreshed for `presence_stale_s` (s) is an edge that died without
    # its tombstone (kill -9) and is left out of listings. At most `presence_max_streams` streams per edge are
    # listed (the newest); the others are counted. A DELETE waits up to `stream_disconnect_wait_s` (s) for the
    # holding edge's confirmation, then answers 202.
    presence_interval_s: float = Field(2.0, gt=0, le=60)
    presence_stale_s: float = Field(10.0, gt=0)
    presence_max_streams: int = Field(1000, ge=1, le=5000)
    stream_disconnect_wait_s: float = Field(3.0, ge=0, le=30)

    # --- Security of the edge (app/auth/): who may call it, and what each principal may do ---
    # "on" (the default) asks every route but the public ones for a credential; "off" serves everyone
    # as admin and logs a warning at every start.
    auth: Literal["on", "off"] = "on"
    # JWT keys; set exactly one: an HS256 secret (at least 32 bytes), a PEM public key (RS256 or ES256,
    # from the key's type), or a JWKS URL (keys cached, fetched again on an unknown `kid`).
    auth_jwt_secret: SecretStr | None = None
    auth_jwt_public_key_file: Path | None = None
    auth_jwks_url: str | None = None
    # Checked when set: the token's `aud` must contain the audience, its `iss` must equal the issuer.
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    # Clock skew (s) accepted on `exp`, `nbf` and `iat`.
    auth_jwt_leeway_s: float = Field(10.0, ge=0, le=300)
    # API keys of backend services: a YAML list of {name, sha256 (hex of the key), scope}.
    auth_api_keys_file: Path | None = None
    # A live stream gets a `token-expiring` event this many seconds before its credential's `exp`.
    auth_expiry_warning_s: float = Field(30.0, ge=0)
    # Browser origins allowed to call the edge (CORS, credentials included); empty: no CORS headers.
    # A JSON list or comma-separated names.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

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
    worker_linger_ms: int = Field(0, ge=0)
    worker_fetch_max_wait_ms: int = Field(10, ge=0, le=5000)
    # Offset commit interval (s), group session timeout (s; the broker's minimum is 6), and records
    # in flight (sent, not yet acknowledged) above which the agent waits.
    worker_commit_interval_s: float = Field(1.0, gt=0)
    worker_session_timeout_s: float = Field(10.0, ge=6)
    worker_max_inflight: int = Field(5000, ge=1)
    # After SIGTERM the worker exits with code 1 if draining, committing and leaving take longer (s).
    worker_shutdown_timeout_s: float = Field(30.0, gt=0)
    # Records seen again after a crash: look this far back (s) in destinations for copies already
    # written, reading at most this many records per destination topic.
    recovery_scan_slack_s: float = Field(5.0, ge=0)
    recovery_scan_max_records: int = Field(1_000_000, ge=1)
    # The worker's local scratch directory (kept for deployments that set it; the worker keeps no state
    # there since it left Faust), and how often (s) the worker logs its counters.
    worker_data_dir: Path = ROOT / ".run" / "worker"
    worker_stats_interval_s: float = Field(30.0, gt=0)

    # --- Observability (app/observe/, streams/worker/metrics.py, streams/logs.py) ---
    # Log lines as sentences ("text") or one JSON object per line ("json"); credentials are masked in both.
    log_format: Literal["text", "json"] = "text"
    # When set, the edge's /metrics asks for `Authorization: Bearer <token>`; unset, it is public.
    metrics_token: SecretStr | None = None
    # The worker's own HTTP server on 127.0.0.1 (/metrics, /healthz, /readyz); 0 turns it off.
    worker_metrics_port: int = Field(9101, ge=0, le=65535)
    # Where the edge reads the worker's figures for /dashboard and /api/v1/health (empty: not read).
    worker_metrics_url: str = "http://127.0.0.1:9101/metrics"
    # The edge's health report: DLQ growth is counted over this window (s); a worker-group lag (records)
    # above the threshold makes the pipeline degraded.
    health_dlq_window_s: float = Field(300.0, gt=0)
    health_lag_degraded_records: int = Field(10_000, ge=1)

    @field_validator("rate_limit_publish", "rate_limit_stream_opens")
    @classmethod
    def _rate_limit(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"{info.field_name} must be in the limits notation such as '1000/second' or "
                             f"'10/second;600/minute', got {value!r}") from None
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError(f"rate_limit_storage must be memory:// or redis://host:port, got {value!r}")
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and (not self.kafka_sasl_username or self.kafka_sasl_password is None):
            raise ValueError(f"kafka_security_protocol {self.kafka_security_protocol} needs KAFKA_SASL_USERNAME "
                             "and KAFKA_SASL_PASSWORD")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (a client certificate "
                             "needs its key)")
        if self.default_partitions > self.topic_max_partitions:
            raise ValueError(f"default_partitions ({self.default_partitions}) exceeds topic_max_partitions "
                             f"({self.topic_max_partitions})")
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return orjson.loads(text) if text.startswith("[") else [o.strip() for o in text.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _jwt_key(self) -> Settings:
        given = [name for name in ("auth_jwt_secret", "auth_jwt_public_key_file", "auth_jwks_url")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one JWT key source, got {' and '.join(given)}")
        if self.auth_jwt_secret is not None and len(self.auth_jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("auth_jwt_secret must be at least 32 bytes (shorter HS256 keys can be guessed); "
                             "make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'")
        return self

    @model_validator(mode="after")
    def _presence_times(self) -> Settings:
        if self.presence_stale_s <= self.presence_interval_s:
            raise ValueError(f"presence_stale_s ({self.presence_stale_s}) must exceed presence_interval_s "
                             f"({self.presence_interval_s}), or every edge's entry would look stale between writes")
        return self

    @model_validator(mode="after")
    def _internal_topics_differ(self) -> Settings:
        names = [self.ingress_topic, self.dlq_topic, self.schemas_topic]
        if len(set(names)) != len(names):
            raise ValueError(
                f"ingress_topic, dlq_topic and schemas_topic must differ, got {names!r}"
            )
        return self

    @property
    def allowed_topic_configs(self) -> frozenset[str]:
        """Return the topic config keys a create request over HTTP may set."""
        return frozenset(key.strip() for key in self.topic_allowed_configs.split(",") if key.strip())

    @property
    def connections_topic(self) -> str:
        """Return the compacted topic holding durable connection definitions."""
        return f"{self.topic_prefix}.internal.connections"

    @property
    def endpoints_topic(self) -> str:
        """Return the compacted topic holding named endpoints (a name and a filter), read by every edge."""
        return f"{self.topic_prefix}.internal.endpoints"

    @property
    def presence_topic(self) -> str:
        """Return the compacted topic where each edge lists its open streams (keyed by edge id)."""
        return f"{self.topic_prefix}.internal.stream-presence"

    @property
    def stream_control_topic(self) -> str:
        """Return the topic of stream-admin commands (disconnect) and their confirmations, read by every edge."""
        return f"{self.topic_prefix}.internal.stream-control"

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
