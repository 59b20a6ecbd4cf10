"""The stream response driven by hand-written receive/send: headers, `retry:` first, the lease given
back when the client leaves; and the content encoding chosen from Accept-Encoding."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.fanout.filters import CompiledFilter, EventFilter
from app.fanout.hub import Hub
from app.fanout.response import EventStreamResponse, choose_encoding
from app.fanout.subscribers import LIVE
from tests.unit.fakes import TOPIC, settle


@pytest.mark.parametrize(("compression", "accept", "expected"), [
    (False, "br, gzip", None),
    (True, None, "gzip"),
    (True, "gzip, br", "br"),
    (True, "gzip;q=1, br;q=0", "gzip"),
    (True, "*", "br"),
    (True, "identity, x-gzip", "gzip"),
    (True, "br;q=bad, identity", None),
    (True, "identity", None),
])
def test_encoding_is_br_over_gzip_as_the_client_accepts(compression: bool, accept: str | None,
                                                        expected: str | None) -> None:
    assert choose_encoding(compression, accept) == expected


class Client:
    """An ASGI client side: records what is sent, and leaves when told to."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}


def joined(hub: Hub) -> Any:
    return hub.join(CompiledFilter(EventFilter.model_validate({"topics": [TOPIC]}), [TOPIC]))


async def test_stream_sends_headers_then_retry_then_is_live_until_the_client_leaves(hub: Hub) -> None:
    client = Client()
    task = asyncio.create_task(EventStreamResponse(hub, joined(hub), None, 15.0, "gzip")({}, client.receive,
                                                                                         client.send))
    await settle()
    start, retry, named = client.messages
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream") and headers[b"content-encoding"] == b"gzip"
    assert retry["body"] and retry["more_body"] and named["body"]  # `retry:`, then `: stream <id>`, compressed
    assert len(headers[b"es-stream-id"]) == 16
    [sub] = hub.subscribers
    assert sub.state == LIVE and sub.heartbeat_s == 15.0
    client.leave.set()
    await task
    assert not hub.subscribers and not hub.groups and hub.leases == 0


async def test_lease_is_given_back_when_the_response_never_started(hub: Hub) -> None:
    async def refused(message: dict[str, Any]) -> None:
        raise OSError("client went away")

    with pytest.raises(OSError):
        await EventStreamResponse(hub, joined(hub), None, 15.0, None)({}, Client().receive, refused)
    assert hub.leases == 0 and not hub.groups
