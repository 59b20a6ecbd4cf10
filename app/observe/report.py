"""What /api/v1/health and the dashboard's stats stream say: every component as ok, degraded or failed
with the reason, and the figures an operator watches, all from in-memory state and the watch's last
sample (no Kafka request here)."""

from __future__ import annotations

import time
from typing import Any

from app.observe.collector import durable_lag
from app.observe.http import HttpFigures

OK, DEGRADED, FAILED = "ok", "degraded", "failed"
RANK = {OK: 0, DEGRADED: 1, FAILED: 2}
STALE_SAMPLE_S = 30.0  # a watch sample older than this is itself a reason to distrust it


def component(status: str, reason: str | None = None, **details: Any) -> dict[str, Any]:
    """Return one component's entry."""
    return {"status": status, "reason": reason, **details}


def health(state: Any, now: float | None = None) -> dict[str, Any]:
    """Return {status, components}: the worst component's status, and each component with why."""
    now = time.time() if now is None else now
    services, hub, watch = state.services, state.hub, state.watch
    parts: dict[str, dict[str, Any]] = {"kafka": _kafka(services, watch, now), "registry": _registry(services)}
    parts["tails"] = _tails(hub, now)
    parts["catchup"] = _catchup(hub)
    parts["worker_group"] = _group(services.settings, watch)
    parts["dlq"] = _dlq(services.settings, watch)
    worst = max((p["status"] for p in parts.values()), key=RANK.__getitem__)
    return {"status": worst, "checked_at": now, "components": parts}


def _kafka(services: Any, watch: Any, now: float) -> dict[str, Any]:
    if not services.ready.is_set():
        return component(FAILED, services.last_error or "connecting to Kafka")
    if watch.sampled_at is None:
        return component(DEGRADED, "connected; the first health sample is not taken yet")
    if not watch.kafka["up"]:
        return component(FAILED, watch.kafka["error"])
    if now - watch.sampled_at > STALE_SAMPLE_S:
        return component(DEGRADED, f"the last sample is {now - watch.sampled_at:.0f} s old")
    return component(OK, None, latency_ms=watch.kafka["latency_ms"])


def _registry(services: Any) -> dict[str, Any]:
    registry = services.registry
    if not registry.running:
        return component(FAILED, "the schema registry is not reading its topic")
    return component(OK, None, subjects=len(registry.subjects()))


def _tails(hub: Any, now: float) -> dict[str, Any]:
    tails = []
    for topic, tail in sorted(hub.tails.items()):
        age = None if tail.last_record_at is None else round(now - tail.last_record_at, 1)
        tails.append({"topic": topic, "position": list(tail.pos), "last_record_age_s": age})
    return component(OK, None if tails else "no topic is tailed (no live stream)", tails=tails)


def _catchup(hub: Any) -> dict[str, Any]:
    pool = hub.catchup
    details = {"busy": pool.busy, "max": pool.size, "waiting": pool.waiting}
    if pool.busy >= pool.size and pool.waiting:
        return component(DEGRADED, f"all {pool.size} catch-up readers are busy and {pool.waiting} clients wait",
                         **details)
    return component(OK, None, **details)


def _group(settings: Any, watch: Any) -> dict[str, Any]:
    group = watch.group
    if group.get("error") is not None:
        return component(FAILED if watch.kafka["up"] else DEGRADED, f"worker group not read: {group['error']}")
    details = {"group": group["group"], "state": group["state"], "members": len(group["members"]),
               "lag": group["total_lag"], "lag_by_partition": group["lag"]}
    if not group["members"]:
        return component(FAILED, f"no worker is in group {group['group']!r}: nothing routes ingress events",
                         **details)
    if group["total_lag"] > settings.health_lag_degraded_records:
        return component(DEGRADED, f"the workers are {group['total_lag']} records behind (more than "
                                   f"{settings.health_lag_degraded_records})", **details)
    return component(OK, None, **details)


def _dlq(settings: Any, watch: Any) -> dict[str, Any]:
    growth = watch.dlq_growth()
    if growth is None:
        return component(OK, "not enough samples yet to tell DLQ growth")
    details = {"growth": growth, "window_s": round(watch.dlq_window_s())}
    if growth > 0:
        return component(DEGRADED, f"{growth} records reached {settings.dlq_topic} in the last "
                                   f"{details['window_s']} s", **details)
    return component(OK, None, **details)


def snapshot(state: Any, figures: HttpFigures, now: float | None = None) -> dict[str, Any]:
    """Return the figures of the dashboard: counters (the page derives rates), latency quantiles, streams,
    durable connections, pipeline, topics and health."""
    now = time.time() if now is None else now
    services, hub, watch = state.services, state.hub, state.watch
    durable, named = len(services.connections.live), services.endpoints.streams_here()
    latency = hub.latency
    lag = durable_lag(hub) if durable else []
    return {
        "time": now,
        "deliveries": hub.deliveries,
        "published": sum(n for outcome, n in figures.published.items() if outcome == "accepted"),
        "published_by_outcome": dict(figures.published),
        "latency_ms": {name: None if (v := latency.quantile(q)) is None else round(v * 1000, 2)
                       for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "streams": {"plain": max(0, len(hub.subscribers) - durable - named), "durable": durable, "endpoint": named,
                    "stats": figures.stats_streams, "max": hub.settings.stream_max_clients},
        "fallbacks": hub.fallbacks, "slow_closed": hub.slow_closed, "replays": hub.replays,
        "catchup": {"busy": hub.catchup.busy, "max": hub.catchup.size, "waiting": hub.catchup.waiting},
        "connections": [{"id": conn_id, "status": live["status"], "delivered": live["events_delivered"]}
                        for conn_id, live in sorted(services.connections.live.items())][:50],
        "connections_lag": {"max": max(lag, default=0), "sum": sum(lag)},
        "worker": watch.worker, "group": watch.group, "topics": watch.topics,
        "health": health(state, now)["components"],
    }
