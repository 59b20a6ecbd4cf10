"""Run the edge: `python -m app` (uvicorn with uvloop and httptools)."""

from __future__ import annotations

import logging

import uvicorn

from streams.settings import get_settings


def main() -> None:
    """Serve the edge on ES_HTTP_HOST:ES_HTTP_PORT."""
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("app.main:create_app", factory=True, host=settings.http_host, port=settings.http_port,
                loop="uvloop", http="httptools", log_level="info", access_log=False, backlog=settings.http_backlog)


if __name__ == "__main__":
    main()
