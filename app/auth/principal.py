"""Who is calling: the principal an authenticated request carries as `request.state.principal`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.auth.scopes import Scopes, parse_scope

Method = Literal["jwt", "api_key", "off"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: `sub` identifies it (rate limits and connection ownership key on it)."""

    sub: str
    scopes: Scopes
    expires_at: float | None  # Unix time the credential stops being valid; None for API keys and auth off
    method: Method  # how it authenticated: a JWT, an API key, or nothing (ES_AUTH=off)

    @property
    def is_admin(self) -> bool:
        """Tell whether the principal holds the `admin` scope."""
        return self.scopes.admin


ANONYMOUS_ADMIN = Principal("anonymous", parse_scope("admin"), None, "off")
