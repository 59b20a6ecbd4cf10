"""One SSE client's write side: write now when the socket takes bytes, else queue in a bounded buffer.

The fan-out loop calls `write()` for every matching client and must never wait on one of them.
ASGI's `send` is a coroutine, so `write()` drives it by hand: when the server's transport accepts
the bytes the coroutine finishes without suspending (the common case, no task, no loop turn);
when the transport is paused (the client stopped reading) the coroutine suspends on the server's
drain, and only then is a task made to finish it and flush what queued up meanwhile.

Under uvicorn, when every layer between the route and the server passes `send` straight through
(Starlette's and FastAPI's middleware do), body frames skip that chain: they are written to the
server's transport with HTTP/1.1 chunk framing, exactly as uvicorn's own `send` would, while the
response start, the end and every write made while the client is slow still go through `send`.
That halves the edge's CPU per delivery at 10,000 clients (bench/sse_load.py). `direct_path` alone
decides whether that applies, and says why not; otherwise every frame goes through plain ASGI `send`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import brotli

log = logging.getLogger(__name__)
# ASGI `send`; `write()` drives the coroutine it returns by hand, so it must be a coroutine function.
Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
Encoding = Literal["br", "gzip"]


class Encoder:
    """Per-connection compressor that flushes every write, so events are never held back."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        if encoding == "gzip":
            # A 4 KiB window keeps each connection's zlib state near 20 KB instead of ~260 KB.
            self._gzip = zlib.compressobj(6, zlib.DEFLATED, 16 + 12, 5)
        else:
            self._br = brotli.Compressor(mode=brotli.MODE_TEXT, quality=4, lgwin=16)

    def encode(self, data: bytes) -> bytes:
        """Return compressed bytes for `data`, flushed so the client can decode them at once."""
        if self.encoding == "gzip":
            return self._gzip.compress(data) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        return self._br.process(data) + self._br.flush()

    def finish(self, data: bytes = b"") -> bytes:
        """Return the compressed tail of the stream (ends the gzip member or brotli stream)."""
        if self.encoding == "gzip":
            return self._gzip.compress(data) + self._gzip.flush(zlib.Z_FINISH)
        return self._br.process(data) + self._br.finish()


async def _resume(coro: Any, waiting: Any) -> None:
    """Finish a coroutine that was started by hand and suspended on `waiting` (what a Task does).

    The future is waited on through a done-callback (`asyncio.wait`), not awaited: it still carries
    the "blocking" mark of the coroutine's own await, which a second await would refuse.
    """
    while True:
        if waiting is None:
            await asyncio.sleep(0)
        else:
            await asyncio.wait([waiting])  # its result or error reaches the coroutine below
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # queued bytes per client when the caller names no bound
MAX_CHUNK_BYTES = 256 * 1024  # largest socket write `write_batch` joins frames into (bytes)
CLOSE_GRACE_S = 10.0  # how long a closed but blocked client may take to read its last bytes
MAX_WRAPPERS = 16  # layers of middleware `direct_path` looks through
_CYCLE_ATTRS = ("transport", "flow", "disconnected", "chunked_encoding", "response_complete")
_reported: set[str] = set()  # reasons for the plain path already logged by this process


def direct_path(send: Send, *, enabled: bool = True) -> tuple[Any | None, str]:
    """Return (uvicorn's response cycle, "") when body frames may go straight to its transport, else
    (None, why not); call it after the response start, which decides the chunked framing.

    Each layer between the route and the server must be a closure over a variable named `send` that
    passes it through (Starlette's error and exception middleware, FastAPI's route wrapper): the
    direct write skips those layers, so anything that acts on the body (a compressing or recording
    middleware) or another server keeps the plain ASGI path.
    """
    if not enabled:
        return None, "direct writes are turned off (stream_direct_writes)"
    fn: Any = send
    for _ in range(MAX_WRAPPERS):
        owner = getattr(fn, "__self__", None)
        if owner is not None:
            missing = [name for name in _CYCLE_ATTRS if not hasattr(owner, name)]
            if missing:
                return None, f"{type(owner).__qualname__} is not uvicorn's httptools response cycle (no {missing[0]})"
            if owner.chunked_encoding is not True:
                return None, "the response is not sent with chunked encoding"
            return owner, ""
        code = getattr(fn, "__code__", None)
        if code is None:
            return None, f"send is a {type(fn).__qualname__}, neither a bound method nor a function"
        if "send" not in code.co_freevars or fn.__closure__ is None:
            return None, f"{fn.__qualname__} wraps send without being a pass-through closure over `send`"
        fn = fn.__closure__[code.co_freevars.index("send")].cell_contents
    return None, f"more than {MAX_WRAPPERS} layers wrap send"


def _report_plain_path(reason: str) -> None:
    """Log once per reason why streams use plain ASGI `send` (later ones at debug)."""
    if reason in _reported:
        log.debug("An SSE stream writes through ASGI send: %s.", reason)
        return
    _reported.add(reason)
    log.info("SSE streams write through ASGI send instead of the server's transport: %s.", reason)


class Connection:
    """The write side of one SSE response, with a bounded queue used only while the client is slow."""

    __slots__ = ("_send", "_cycle", "_encoder", "buffer", "max_buffer", "max_bytes", "buffered_bytes",
                 "blocked_since", "last_write", "closed", "_ending", "_flusher", "on_drain", "on_flushed")

    def __init__(self, send: Send, max_buffer: int, encoder: Encoder | None = None, *, direct: bool = True,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._send = send
        self._cycle, reason = direct_path(send, enabled=direct)
        if self._cycle is None:
            _report_plain_path(reason)
        self._encoder = encoder
        self.buffer: deque[bytes] = deque()
        self.max_buffer = max_buffer
        self.max_bytes = max_bytes  # queued bytes allowed beside the frame count (ES_STREAM_BUFFER_MAX_BYTES)
        self.buffered_bytes = 0  # running total of `buffer`, so the bound costs no scan per write
        self.blocked_since: float | None = None  # monotonic time the transport stopped taking bytes
        self.last_write = time.monotonic()
        self.closed = False
        self._ending: bytes | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.on_drain: Callable[[], None] | None = None  # called once the queue drained (not after close)
        self.on_flushed: Callable[[], None] | None = None  # called after a flush in which no send failed

    @property
    def direct(self) -> bool:
        """Tell whether body frames go straight to the server's transport."""
        return self._cycle is not None

    @property
    def blocked(self) -> bool:
        """Tell whether bytes are waiting for the client to read."""
        return self.blocked_since is not None

    def write(self, data: bytes) -> bool:
        """Write `data` now, or queue it while blocked; False when the queue is full (nothing queued)."""
        if self.closed:
            return True
        if self.blocked_since is not None:
            if len(self.buffer) >= self.max_buffer or self.buffered_bytes + len(data) > self.max_bytes:
                return False
            self.buffer.append(data)
            self.buffered_bytes += len(data)
            return True
        cycle = self._cycle
        if cycle is not None:
            if cycle.disconnected or cycle.response_complete:
                self.closed = True  # the client left; the response coroutine hears it and unsubscribes
                return True
            if cycle.flow.write_paused:  # the client stopped reading: queue, and let `send` wait for it
                self.blocked_since = time.monotonic()
                self.buffer.append(data)
                self.buffered_bytes += len(data)
                self._flusher = asyncio.ensure_future(self._flush(None, None))
                return True
            body = self._encoder.encode(data) if self._encoder else data
            cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
            self.last_write = time.monotonic()
            return True
        self._start(self._encoder.encode(data) if self._encoder else data, True)
        return True

    def write_batch(self, frames: list[bytes]) -> int:
        """Write several frames with one socket write (one chunk, one compression flush) when the socket
        takes bytes now, at most MAX_CHUNK_BYTES at a time; return how many were taken: all of them, or
        (only once the client is slow and its queue full) the prefix before the first one refused."""
        taken, count = 0, len(frames)
        while taken < count:
            if count - taken == 1 or self.closed or self.blocked_since is not None:
                if not self.write(frames[taken]):  # frame by frame: the queue's bounds count each one
                    return taken
                taken += 1
                continue
            end, size = taken + 1, len(frames[taken])
            while end < count and size + len(frames[end]) <= MAX_CHUNK_BYTES:
                size += len(frames[end])
                end += 1
            self._write_joined(frames[taken:end])
            taken = end
        return taken

    def write_frames(self, frames: list[bytes], per_write: int = 1) -> int:
        """Write frames in order, up to `per_write` per socket write (`write_batch`); return how many were
        taken, stopping at the first one refused (the client's queue is full)."""
        if per_write <= 1:
            for index, frame in enumerate(frames):
                if not self.write(frame):
                    return index
            return len(frames)
        taken = 0
        for first in range(0, len(frames), per_write):
            chunk = frames[first:first + per_write]
            done = self.write_batch(chunk)
            taken += done
            if done < len(chunk):
                break
        return taken

    def _write_joined(self, frames: list[bytes]) -> None:
        """Write frames as one chunk (not blocked: written now, or queued whole if the transport pauses)."""
        Connection.write(self, b"".join(frames))

    def close(self, final: bytes = b"") -> None:
        """Send `final` after anything queued, then end the response; later writes are ignored."""
        if self.closed:
            return
        self.closed = True
        self.on_drain = None
        if self.blocked_since is not None:
            self._ending = final
            if self._cycle is not None:  # a client that never reads again must not hold the socket forever
                asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._drop_if_still_blocked)
            return
        self._start(self._encoder.finish(final) if self._encoder else final, False)

    def _drop_if_still_blocked(self) -> None:
        if self.blocked_since is not None and self._cycle is not None:
            log.info("Dropping a closed stream whose client has not read for %.0fs.", CLOSE_GRACE_S)
            self._cycle.transport.abort()

    def _start(self, body: bytes, more: bool) -> None:
        coro = self._send({"type": "http.response.body", "body": body, "more_body": more})
        try:
            waiting = coro.send(None)
        except StopIteration:
            self.last_write = time.monotonic()
            return
        except Exception as exc:  # the server refused the message: treat the client as gone
            log.warning("Write to SSE client failed: %r", exc)
            self.closed = True
            return
        # The transport is full: finish this send in a task, queue what follows until it drains.
        self.blocked_since = time.monotonic()
        self._flusher = asyncio.ensure_future(self._flush(coro, waiting))

    async def _flush(self, coro: Any, waiting: Any) -> None:
        failed = False
        try:
            if coro is not None:
                await _resume(coro, waiting)
            while self.buffer:
                data = b"".join(self.buffer)
                self.buffer.clear()
                self.buffered_bytes = 0
                await self._send({"type": "http.response.body", "more_body": True,
                                  "body": self._encoder.encode(data) if self._encoder else data})
            if self._ending is not None:
                final, self._ending = self._ending, None
                await self._send({"type": "http.response.body", "more_body": False,
                                  "body": self._encoder.finish(final) if self._encoder else final})
        except asyncio.CancelledError:
            if coro is not None:
                coro.close()
            raise
        except Exception as exc:
            log.warning("Flushing an SSE client failed: %r", exc)
            self.closed = True
            failed = True
        finally:
            self.blocked_since = None
            self.last_write = time.monotonic()
            self._flusher = None
        if self.on_flushed is not None and not failed:
            self.on_flushed()
        if self.on_drain is not None and not self.closed:
            callback, self.on_drain = self.on_drain, None
            callback()

    def abort(self) -> None:
        """Stop a pending flush (the client is gone or the process is stopping)."""
        self.closed = True
        self.buffer.clear()
        self.buffered_bytes = 0
        if self._flusher is not None:
            self._flusher.cancel()
