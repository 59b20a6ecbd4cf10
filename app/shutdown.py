"""Graceful shutdown of an edge with open streams."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.fanout.hub import Hub


def close_on_exit_signals(hub: Hub, delay_s: float = 0.3) -> None:
    """End all streams shortly after SIGTERM/SIGINT, since uvicorn waits for open responses to finish.

    uvicorn installs its own handlers with `signal.signal`; this wraps them (call them first) and
    gives uvicorn time to stop accepting, so clients reconnect to another (or the restarted) edge.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            if callable(previous):
                previous(signum, frame)
            hub.closing = True
            loop.call_soon_threadsafe(loop.call_later, delay_s, hub.close_all)

        with contextlib.suppress(ValueError):  # not the main thread (e.g. under a test client)
            signal.signal(sig, handler)
