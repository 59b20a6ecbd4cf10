"""Authentication and authorization errors, answered as RFC 6750 challenges by the one handler (app.problems)."""

from __future__ import annotations

from streams.errors import StreamError

REALM = "eventstream"


def _quoted(text: str) -> str:
    """Return text safe inside a quoted-string of WWW-Authenticate (no quotes, backslashes or line breaks)."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')


class Unauthenticated(StreamError):
    """The request carries no credential, or one the edge cannot accept; the message says which (never the
    credential itself)."""

    status = 401
    title = "Unauthorized"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.headers = {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
                                            f'error_description="{_quoted(reason)}"'}


class Forbidden(StreamError):
    """The principal is known but its scope does not cover the topic or action."""

    status = 403
    title = "Forbidden"

    def __init__(self, reason: str, *, needed: str) -> None:
        super().__init__(reason)
        self.needed = needed
        self.headers = {"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", '
                                            f'scope="{_quoted(needed)}", error_description="{_quoted(reason)}"'}


class AuthConfigError(ValueError):
    """The edge's authentication settings cannot be used; the message names the setting and the fix."""
