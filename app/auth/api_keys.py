"""API keys of backend services, read from ES_AUTH_API_KEYS_FILE: only SHA-256 digests are stored.

    keys:
      - name: billing            # the principal's sub is "key:billing"
        sha256: 9f86d0...         # hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`)
        scope: publish:billing.* subscribe:billing.*

A key is compared with every entry in constant time; neither keys nor digests are logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.auth.errors import AuthConfigError
from app.auth.scopes import Scopes, parse_scope

HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
SUB_PREFIX = "key:"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its name, the SHA-256 of its value, and its scope."""

    name: str
    digest: bytes
    scopes: Scopes


class ApiKeys:
    """The configured keys, looked up by the digest of the presented value."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def from_file(cls, path: Path) -> ApiKeys:
        """Load and check the YAML file, raising AuthConfigError naming the entry at fault."""
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise AuthConfigError(f"ES_AUTH_API_KEYS_FILE {str(path)!r} cannot be read: {exc}") from None
        entries = raw.get("keys") if isinstance(raw, dict) else raw
        if not isinstance(entries, list):
            raise AuthConfigError(f"ES_AUTH_API_KEYS_FILE {str(path)!r} must hold a list of keys (or keys: [...])")
        keys, names = [], set()
        for index, entry in enumerate(entries):
            key = cls._entry(entry, f"{path}: key #{index + 1}")
            if key.name in names:
                raise AuthConfigError(f"{path}: key name {key.name!r} is used twice")
            names.add(key.name)
            keys.append(key)
        return cls(keys)

    @staticmethod
    def _entry(entry: Any, where: str) -> ApiKey:
        if not isinstance(entry, dict) or set(entry) - {"name", "sha256", "scope"}:
            raise AuthConfigError(f"{where} must be a mapping of name, sha256 and scope")
        name, digest, scope = entry.get("name"), entry.get("sha256", ""), entry.get("scope", "")
        if not isinstance(name, str) or not name:
            raise AuthConfigError(f"{where} needs a name")
        if not isinstance(digest, str):  # YAML reads a digest of digits only as a number
            raise AuthConfigError(f"{where} ({name}): sha256 must be a quoted string of 64 hex digits")
        digest = digest.lower()
        if not HEX_DIGEST.match(digest):
            raise AuthConfigError(f"{where} ({name}): sha256 must be 64 hex digits (the SHA-256 of the key)")
        try:
            scopes = parse_scope(scope, strict=True)
        except ValueError as exc:
            raise AuthConfigError(f"{where} ({name}): {exc}") from None
        return ApiKey(name, bytes.fromhex(digest), scopes)

    def find(self, value: str) -> ApiKey | None:
        """Return the key whose digest matches `value`, comparing with every entry in constant time."""
        digest = hashlib.sha256(value.encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found
