"""The scope language of tokens and API keys: `admin`, `subscribe:<topic-glob>`, `publish:<topic-glob>`.

Globs are those of the shared matcher (streams.matching: `*` any run, `?` one character). Internal
topics (ingress, DLQ, `_schemas`, changelogs, `*.internal.*`, `__*`) are never covered by a glob: only
`admin` reaches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streams.matching import compile_globs
from streams.settings import Settings

ADMIN = "admin"
ACTIONS = ("subscribe", "publish")


def _never(_: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Scopes:
    """A parsed scope: admin or not, and the topic globs each action may use."""

    entries: tuple[str, ...] = ()
    admin: bool = False
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    _can_subscribe: Callable[[str], bool] = field(default=_never, repr=False, compare=False)
    _can_publish: Callable[[str], bool] = field(default=_never, repr=False, compare=False)

    def allows(self, action: str, topic: str, settings: Settings) -> bool:
        """Tell whether `action` ("subscribe" or "publish") on `topic` is granted."""
        if self.admin:
            return True
        if is_internal(topic, settings):
            return False
        test = self._can_subscribe if action == "subscribe" else self._can_publish
        return test(topic)

    def __str__(self) -> str:
        return " ".join(self.entries)


def parse_scope(value: str | Iterable[str] | None, *, strict: bool = False) -> Scopes:
    """Parse a space-separated scope (or a list of entries); `strict` refuses entries it does not know.

    Tokens from identity providers carry other scopes too (`openid`, `profile`): those are ignored unless
    `strict` (API key files, where an unknown entry is a typo)."""
    entries = value.split() if isinstance(value, str) else list(value or [])
    admin = False
    globs: dict[str, list[str]] = {action: [] for action in ACTIONS}
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"a scope entry must be a string, got {entry!r}")
        action, sep, pattern = entry.partition(":")
        if entry == ADMIN:
            admin = True
        elif sep and action in globs and pattern:
            globs[action].append(pattern)
        elif strict:
            raise ValueError(f"unknown scope entry {entry!r}; use admin, subscribe:<topic-glob> or "
                             "publish:<topic-glob>")
    return Scopes(tuple(entries), admin, tuple(globs["subscribe"]), tuple(globs["publish"]),
                  compile_globs(globs["subscribe"]) if globs["subscribe"] else _never,
                  compile_globs(globs["publish"]) if globs["publish"] else _never)


def is_internal(topic: str, settings: Settings) -> bool:
    """Tell whether a topic is the service's own (admin only): ingress, DLQ, registry, changelogs, internals."""
    return settings.is_internal(topic) or ".internal." in f".{topic}." or topic.startswith("__")
