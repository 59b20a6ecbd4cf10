"""The per-client write side: no task while the socket takes bytes, bounded queue while it does not."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import brotli
import pytest

from app.sse.writer import Connection, Encoder, direct_path
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
    assert direct_path(pass_through(cycle.send)) == (cycle, "")
    conn.write(b"data: x\n\n")
    assert cycle.transport.writes == [b"9\r\ndata: x\n\n\r\n"]


def test_wrapper_that_does_more_than_pass_through_keeps_the_asgi_path() -> None:
    cycle = FakeCycle()

    def recording(inner: Any) -> Any:
        async def sender(message: dict[str, Any]) -> None:
            await inner(message)
        return sender

    found, reason = direct_path(recording(cycle.send))
    assert found is None and "recording.<locals>.sender" in reason and "pass-through" in reason
    cycle.chunked_encoding = False
    assert direct_path(cycle.send) == (None, "the response is not sent with chunked encoding")


def test_send_of_another_server_says_it_is_not_uvicorns_cycle() -> None:
    found, reason = direct_path(pass_through(FakeServer().send))
    assert found is None and reason == "FakeServer is not uvicorn's httptools response cycle (no transport)"


def test_send_that_is_neither_a_function_nor_a_method_keeps_the_asgi_path() -> None:
    class Callable:
        async def __call__(self, message: dict[str, Any]) -> None:
            pass

    found, reason = direct_path(Callable())
    assert found is None and reason == f"send is a {Callable.__qualname__}, neither a bound method nor a function"


def test_direct_writes_turned_off_keep_the_asgi_path_even_under_uvicorn() -> None:
    cycle = FakeCycle()
    found, reason = direct_path(pass_through(cycle.send), enabled=False)
    assert found is None and "turned off" in reason
    conn = Connection(pass_through(cycle.send), max_buffer=4, direct=False)
    conn.write(b"data: x\n\n")
    assert not conn.direct and cycle.transport.writes == [b"9\r\ndata: x\n\n\r\n"]  # framed by `send`


def test_a_chain_of_wrappers_too_deep_keeps_the_asgi_path() -> None:
    send: Any = FakeCycle().send
    for _ in range(20):
        send = pass_through(send)
    assert direct_path(send) == (None, "more than 16 layers wrap send")


def test_reason_for_the_plain_path_is_logged_once(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.sse.writer._reported", set())
    with caplog.at_level("INFO", logger="app.sse.writer"):
        for _ in range(3):
            Connection(FakeServer().send, max_buffer=4)
    infos = [r for r in caplog.records if r.levelname == "INFO"]
    assert len(infos) == 1 and "FakeServer is not uvicorn's" in infos[0].getMessage()


async def test_on_flushed_runs_after_a_flush_without_failure_but_not_after_a_failed_one() -> None:
    server = FakeServer()
    conn = Connection(server.send, max_buffer=4)
    flushed: list[bool] = []
    conn.on_flushed = lambda: flushed.append(True)
    server.writable.clear()
    conn.write(b"1")
    conn.write(b"2")
    await settle()
    server.writable.set()
    await settle()
    assert flushed == [True]

    async def broken(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        raise OSError("connection reset")

    failing = Connection(broken, max_buffer=4)
    failing.on_flushed = lambda: flushed.append(False)
    failing.write(b"1")
    await settle()
    assert failing.closed and flushed == [True]


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


async def test_paused_client_refuses_once_the_queued_bytes_would_pass_max_bytes() -> None:
    server = FakeServer()
    server.writable.clear()
    conn = Connection(server.send, max_buffer=100, max_bytes=10)
    assert conn.write(b"first")  # in the server's send: not queued
    assert conn.write(b"123456") and conn.write(b"7890")
    assert conn.buffered_bytes == 10
    assert conn.write(b"x") is False  # 11 bytes would pass the bound, though 98 frames are left
    server.writable.set()
    await settle()
    assert conn.buffered_bytes == 0 and server.bodies == [b"first", b"1234567890"]
    assert conn.write(b"again")


async def test_write_batch_joins_frames_into_one_socket_write() -> None:
    server = FakeServer()
    conn = Connection(server.send, max_buffer=4)
    assert conn.write_batch([b"a", b"b", b"c"]) == 3
    assert server.bodies == [b"abc"]


async def test_write_batch_splits_at_the_chunk_size() -> None:
    from app.sse.writer import MAX_CHUNK_BYTES

    server = FakeServer()
    conn = Connection(server.send, max_buffer=4)
    big = b"x" * (MAX_CHUNK_BYTES // 2)
    assert conn.write_batch([big, big, big, b"y"]) == 4
    assert [len(body) for body in server.bodies] == [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES // 2 + 1]


async def test_write_batch_to_a_slow_client_queues_frame_by_frame_and_stops_at_the_bound() -> None:
    server = FakeServer()
    server.writable.clear()
    conn = Connection(server.send, max_buffer=2)
    assert conn.write_batch([b"1", b"2"]) == 2  # one write, which stalls in the server
    assert conn.blocked
    assert conn.write_batch([b"3", b"4", b"5", b"6"]) == 2  # 3 and 4 queue one by one; 5 is refused
    assert list(conn.buffer) == [b"3", b"4"]
    server.writable.set()
    await settle()
    assert b"".join(server.bodies) == b"1234"


async def test_write_batch_goes_straight_to_the_transport_as_one_chunk() -> None:
    cycle = FakeCycle()
    conn = Connection(pass_through(cycle.send), max_buffer=4)
    assert conn.direct
    conn.write_batch([b"ab", b"cd"])
    assert cycle.transport.writes == [b"4\r\nabcd\r\n"]
