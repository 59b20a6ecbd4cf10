"""The FastAPI edge of the event streaming service."""

from app.main import create_app

__all__ = ["create_app"]
