"""Operator figures (the seed's getSubscriptionStats): streams, deliveries, fallbacks, readers, process."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(prefix="/api/v1", tags=["stats"])


def process_figures() -> dict[str, Any]:
    """Return RSS (MB), open file descriptors and asyncio tasks of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"rss_mb": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1),
            "open_fds": len(os.listdir("/proc/self/fd")), "asyncio_tasks": len(asyncio.all_tasks())}


@router.get("/stats", summary="Streams per topic, deliveries, slow-client fallbacks, readers in use")
async def stats(request: Request) -> dict[str, Any]:
    """Return this edge's subscription figures and its process figures."""
    hub = request.app.state.hub
    per_topic: dict[str, int] = {}
    for group in hub.groups.values():
        for topic in group.topics:
            per_topic[topic] = per_topic.get(topic, 0) + len(group.live)
    services = request.app.state.services
    return {
        "streams": {"total": len(hub.subscribers), "live": sum(per_topic.values()) if per_topic else 0,
                    "live_per_topic": per_topic, "filter_groups": len(hub.groups)},
        "events_delivered": hub.deliveries,
        "deliveries_per_s": round(hub.deliveries_per_s(), 1),
        "slow_client_fallbacks": hub.fallbacks,
        "catchup_readers": {"in_use": hub.catchup.busy, "started": hub.catchup.started,
                            "max": hub.catchup.size, "clients_waiting": hub.catchup.waiting},
        "tail_readers": len(hub.tails),
        "durable_connections": {"defined": len(services.connections.table),
                                "streaming_here": len(services.connections.live)},
        "process": process_figures(),
    }
