"""The per-client write side: no task while the socket takes bytes, bounded queue while it does not."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import brotli
import pytest

from app.sse.writer import Connection, Encoder, server_cycle
from tests.unit.fakes import FakeCycle, FakeServer, pass_through, settle


async def test_write_reaches_the_server_without_a_task_when_not_paused() -> None:
    server = FakeServer()
    conn = Connection(server.send, max_buffer=4)
    assert conn.write(b"a") and conn.write(b"b")
    assert server.bodies == [b"a", b"b"]  # synchronously: no loop turn happened
    assert not conn.blocked and conn._flusher is None


async def test_paused_client_queues_then_refuses_when_the_buffer_is_full() -> None:
    server = FakeServer()
    server.writable.clear()
    conn = Connection(server.send, max_buffer=2)
    assert conn.write(b"1")  # suspended in the server: the client is now blocked
    assert conn.blocked
    assert conn.write(b"2") and conn.write(b"3")
    assert conn.write(b"4") is False
    assert list(conn.buffer) == [b"2", b"3"]


async def test_drain_flushes_in_order_and_calls_on_drain() -> None:
    server = FakeServer()
    server.writable.clear()
    conn = Connection(server.send, max_buffer=10)
    drained = []
    conn.on_drain = lambda: drained.append(True)
    for chunk in (b"1", b"2", b"3"):
        conn.write(chunk)
    await settle()  # the flush task is waiting on the server's drain before it is signalled
    server.writable.set()
    await settle()
    assert b"".join(server.bodies) == b"123" and not conn.blocked and drained == [True]


async def test_close_while_blocked_sends_queued_bytes_then_final_then_ends() -> None:
    server = FakeServer()
    server.writable.clear()
    conn = Connection(server.send, max_buffer=10)
    conn.write(b"1")
    conn.write(b"2")
    conn.close(b": bye\n\n")
    assert conn.write(b"late") is True  # ignored after close
    await settle()
    server.writable.set()
    await settle()
    assert b"".join(server.bodies) == b"12: bye\n\n" and server.ended


async def test_client_blocked_twice_is_flushed_both_times() -> None:
    server = FakeServer()
    conn = Connection(server.send, max_buffer=10)
    for first, second in ((b"1", b"2"), (b"3", b"4")):
        server.writable.clear()
        conn.write(first)
        conn.write(second)
        await settle()
        server.writable.set()
        await settle()
        assert not conn.blocked and not conn.closed
    assert b"".join(server.bodies) == b"1234"


@pytest.mark.parametrize("encoding", ["gzip", "br"])
async def test_compressed_writes_decode_one_by_one(encoding: str) -> None:
    server = FakeServer()
    conn = Connection(server.send, max_buffer=4, encoder=Encoder(encoding))  # type: ignore[arg-type]
    decoder: Any = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else brotli.Decompressor()
    decode = decoder.decompress if encoding == "gzip" else decoder.process
    for i in range(3):
        conn.write(f"data: {i}\n\n".encode())
        assert decode(server.bodies[-1]) == f"data: {i}\n\n".encode()  # flushed per write
    conn.close(b": end\n\n")
    assert decode(server.bodies[-1]) == b": end\n\n" and server.ended


async def test_direct_path_writes_chunks_to_the_transport_behind_pass_through_wrappers() -> None:
    cycle = FakeCycle()
    conn = Connection(pass_through(pass_through(cycle.send)), max_buffer=4)
    assert server_cycle(pass_through(cycle.send)) is cycle
    conn.write(b"data: x\n\n")
    assert cycle.transport.writes == [b"9\r\ndata: x\n\n\r\n"]


def test_wrapper_that_does_more_than_pass_through_keeps_the_asgi_path() -> None:
    cycle = FakeCycle()

    def recording(inner: Any) -> Any:
        async def sender(message: dict[str, Any]) -> None:
            await inner(message)
        return sender

    assert server_cycle(recording(cycle.send)) is None
    cycle.chunked_encoding = False
    assert server_cycle(cycle.send) is None


async def test_direct_path_queues_while_paused_and_flushes_through_send() -> None:
    cycle = FakeCycle()
    conn = Connection(pass_through(cycle.send), max_buffer=2)
    cycle.flow.writable.clear()
    assert conn.write(b"a") and conn.blocked
    assert conn.write(b"b") is True and conn.write(b"c") is False  # full
    await settle()
    cycle.flow.writable.set()
    await settle()
    assert cycle.transport.writes == [b"2\r\nab\r\n"] and not conn.blocked


async def test_direct_path_stops_writing_once_the_client_left() -> None:
    cycle = FakeCycle()
    conn = Connection(pass_through(cycle.send), max_buffer=2)
    cycle.disconnected = True
    conn.write(b"a")
    assert cycle.transport.writes == [] and conn.closed


async def test_closed_client_that_never_reads_again_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.sse.writer.CLOSE_GRACE_S", 0.01)
    cycle = FakeCycle()
    conn = Connection(pass_through(cycle.send), max_buffer=4)
    cycle.flow.writable.clear()
    conn.write(b"a")
    conn.close(b": bye\n\n")
    await asyncio.sleep(0.05)
    assert cycle.transport.aborted
