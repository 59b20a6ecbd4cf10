"""Bound what a request may bring before any route sees it: header bytes (431) and body bytes (413).

A pure ASGI middleware: `send` is passed through untouched (so the SSE writer's direct path still
applies, app/sse/writer.py `direct_path`); only `receive` is wrapped, counting body bytes. A body
whose Content-Length is over the limit is refused before it is read.
"""

from __future__ import annotations

from typing import Any

from app.problems import problem_response
from streams.errors import PayloadTooLarge


class RequestSizeLimit:
    """Refuse requests whose headers or body exceed the configured number of bytes."""

    def __init__(self, app: Any, *, max_header_bytes: int, max_body_bytes: int) -> None:
        self.app, self.max_header_bytes, self.max_body_bytes = app, max_header_bytes, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or ()
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + \
            sum(len(k) + len(v) + 4 for k, v in headers)
        if size > self.max_header_bytes:
            response = problem_response(431, "Request headers too large",
                                        f"request line and headers are {size} bytes; the limit is "
                                        f"{self.max_header_bytes} (ES_HTTP_MAX_HEADER_BYTES)")
            await response(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = problem_response(413, PayloadTooLarge.title, f"request body is {int(declared)} bytes; "
                                        f"the limit is {limit} (ES_HTTP_MAX_BODY_BYTES)")
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (ES_HTTP_MAX_BODY_BYTES)")
            return message

        await self.app(scope, counted, send)
