"""Authentication (JWT, API keys) and authorization (scopes per topic, admin) of the edge."""

from app.auth.authenticator import Authenticator
from app.auth.errors import AuthConfigError, Forbidden, Unauthenticated
from app.auth.guard import (
    PUBLIC_PATHS,
    AdminOnly,
    CurrentPrincipal,
    authenticate,
    check_topics,
    mark_public_operations,
)
from app.auth.principal import Principal

__all__ = ["PUBLIC_PATHS", "AdminOnly", "AuthConfigError", "Authenticator", "CurrentPrincipal", "Forbidden",
           "Principal", "Unauthenticated", "authenticate", "check_topics", "mark_public_operations"]
