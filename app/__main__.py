"""Run the edge: `python -m app` (uvicorn with uvloop and httptools)."""

from __future__ import annotations

import uvicorn

from app.auth import AuthConfigError, Authenticator
from streams import logs
from streams.settings import get_settings


def main() -> None:
    """Serve the edge on ES_HTTP_HOST:ES_HTTP_PORT."""
    settings = get_settings()
    try:  # refuse to start, in one line, when authentication is on and has nothing to check against
        Authenticator.from_settings(settings, warn=False)
    except AuthConfigError as exc:
        raise SystemExit(f"eventstream edge: {exc}") from None
    logs.configure(settings.log_format)  # text or JSON lines, credentials masked (streams/logs.py)
    uvicorn.run("app.main:create_app", factory=True, host=settings.http_host, port=settings.http_port,
                loop="uvloop", http="httptools", log_level="info", access_log=False, backlog=settings.http_backlog,
                log_config=None,  # the root handler of logs.configure formats uvicorn's lines too
                # Header bytes buffered per request: h11 honours this; under httptools (no such knob) the
                # RequestSizeLimit middleware (app/request_size.py) refuses more with 431, bodies with 413.
                h11_max_incomplete_event_size=settings.http_max_header_bytes)


if __name__ == "__main__":
    main()
