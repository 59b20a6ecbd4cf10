"""One event matcher for routing rules and stream filters, compiled once and cheap per event.

Glob language (`types`, `sources`, `subjects`):

- `*` matches any run of characters, none included (`.`, `/` and newlines too: there are no separators);
- `?` matches exactly one character;
- every other character is literal, `[`, `]`, `\\`, `.`, `+` and `(` included: there are no classes,
  no escapes and no alternation inside a pattern; a list of patterns matches when any of them does;
- a pattern covers the whole text, case-sensitively; the empty pattern matches only the empty text.

A glob runs the classic star-backtrack algorithm in its segment form: the text between two `*` is a
fixed-length segment, and placing each one at its leftmost fit is never wrong, so no choice is ever
revisited. The fit is found by `str.find`, or for a segment with `?` by a regex made of literals and `.`
only (no quantifier, no alternation: nothing to backtrack over). The worst case is
O(len(text) * len(pattern)), never exponential: unlike the backtracking regex stream filters had,
`*a*a*a*a*a*a*a*a*b` against 10,000 `a` costs microseconds. The shapes most patterns
have take a shortcut (exact -> set lookup, `x*` -> startswith, `*x` -> endswith, `*x*` -> `in`);
bench/matcher_bench.py measures them against google-re2.

Tags: `tags` holds when the event carries any of them, `tags_all` when it carries all of them.

`where` maps dotted paths into the event's JSON `data` (`run.status` reads `data["run"]["status"]`) to
a scalar (equality) or a list of scalars (membership). Values compare as JSON does: `1 == 1.0`, but
`true` is not `1` and `false` is not `0`; `null` matches only a field that is present and null; a field
that is missing, or an object or array, never matches; neither does data that is not a JSON object.
A condition left out (None or an empty list) holds for every event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Scalar = str | int | float | bool | None
Where = Mapping[str, Scalar | list[Scalar]]
_MISSING = object()


class _Segment:
    """A run of pattern characters between two `*`: literals and `?`, of fixed length."""

    __slots__ = ("text", "size", "wild", "regex")

    def __init__(self, text: str) -> None:
        self.text, self.size, self.wild = text, len(text), "?" in text
        # Literals and `.` only, no quantifier: a search costs at most len(text) * size steps, in C.
        self.regex = re.compile("".join("." if c == "?" else re.escape(c) for c in text), re.DOTALL)

    def at(self, text: str, index: int) -> bool:
        """Tell whether the segment matches `text` at `index` (the caller knows it fits)."""
        if not self.wild:
            return text.startswith(self.text, index)
        return self.regex.match(text, index) is not None

    def find(self, text: str, start: int, end: int) -> int:
        """Return the leftmost index in [start, end - size] where the segment matches, or -1."""
        if not self.wild:
            return text.find(self.text, start, end)
        found = self.regex.search(text, start, end)
        return -1 if found is None else found.start()


class Glob:
    """One glob pattern (see the module docstring), compiled once; `match` takes the whole text."""

    __slots__ = ("pattern", "_head", "_middle", "_tail", "_star", "_size")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"a glob must be a string, got {type(pattern).__name__}")
        self.pattern = pattern
        parts = pattern.split("*")
        self._star = len(parts) > 1
        self._head, self._tail = _Segment(parts[0]), _Segment(parts[-1])
        self._middle = tuple(_Segment(part) for part in parts[1:-1] if part)
        self._size = sum(map(len, parts))  # the fewest characters a match can have

    def match(self, text: str) -> bool:
        """Tell whether the whole of `text` matches the pattern."""
        size = len(text)
        if size < self._size:
            return False
        if not self._star:
            return size == self._size and self._head.at(text, 0)
        end = size - self._tail.size
        if not self._head.at(text, 0) or not self._tail.at(text, end):
            return False
        start = self._head.size
        for segment in self._middle:
            found = segment.find(text, start, end)
            if found < 0:
                return False
            start = found + segment.size
        return True

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def compile_globs(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Return a test of whether a text matches any of the globs, built from the cheapest check per shape."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    infixes: list[str] = []
    general: list[str] = []
    for pattern in patterns:
        core = pattern.strip("*")
        if "?" in pattern or "*" in core:
            general.append(pattern)
        elif core == pattern:
            exact.add(pattern)
        elif not core:
            return _always
        elif pattern.startswith("*") and pattern.endswith("*"):
            infixes.append(core)
        elif pattern.endswith("*"):
            prefixes.append(core)
        else:
            suffixes.append(core)
    kinds = [kind for kind in (exact, prefixes, suffixes, infixes, general) if kind]
    if not kinds:
        return _never
    if len(kinds) == 1:  # one kind of shape: its own check, without the dispatch below
        if exact:
            return frozenset(exact).__contains__
        if prefixes:
            starts = tuple(prefixes)  # a lambda measures faster than operator.methodcaller here
            return lambda text: text.startswith(starts)
        if suffixes:
            ends = tuple(suffixes)
            return lambda text: text.endswith(ends)
        if len(infixes) == 1:
            return _contains(infixes[0])
        if len(general) == 1:
            return _general(general[0])
    # Patterns that start with literals are tried only when the text starts with one of those literals.
    heads = tuple(_literal_head(p) for p in general if _literal_head(p))
    return _any_of(frozenset(exact), tuple(prefixes), tuple(suffixes), tuple(infixes), heads,
                   tuple(_general(p) for p in general if _literal_head(p)),
                   tuple(_general(p) for p in general if not _literal_head(p)))


def _literal_head(pattern: str) -> str:
    """Return the literal characters a pattern starts with (up to its first `*` or `?`)."""
    return pattern.partition("*")[0].partition("?")[0]


def _general(pattern: str) -> Callable[[str], bool]:
    """Return the cheapest exact test for a pattern with `?` or an inner `*`."""
    if "*" not in pattern:  # literals and `?`: a length check, then one regex without quantifiers
        return Glob(pattern).match
    head, _, tail = pattern.partition("*")
    if "?" not in pattern and "*" not in tail:  # `head*tail`
        size = len(head) + len(tail)
        return lambda text: len(text) >= size and text.startswith(head) and text.endswith(tail)
    return Glob(pattern).match


def _contains(part: str) -> Callable[[str], bool]:
    def contains(text: str) -> bool:
        return part in text

    return contains


def _any_of(exact: frozenset[str], prefixes: tuple[str, ...], suffixes: tuple[str, ...], infixes: tuple[str, ...],
            heads: tuple[str, ...], headed: tuple[Callable[[str], bool], ...],
            free: tuple[Callable[[str], bool], ...]) -> Callable[[str], bool]:
    def any_of(text: str) -> bool:
        if text in exact or (prefixes and text.startswith(prefixes)) or (suffixes and text.endswith(suffixes)):
            return True
        for part in infixes:
            if part in text:
                return True
        if heads and text.startswith(heads):
            for match in headed:
                if match(text):
                    return True
        for match in free:
            if match(text):
                return True
        return False

    return any_of


def _always(text: str) -> bool:
    return True


def _never(text: str) -> bool:
    return False


def json_key(value: Any) -> tuple[str, Any]:
    """Key a JSON scalar so that equal JSON values share a key: true != 1, 1 == 1.0, null only null."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if value is None:
        return ("z", None)
    if isinstance(value, str):
        return ("s", value)
    return ("x", id(value))  # objects and arrays never equal a scalar


def check_where(where: Where, name: str = "where") -> None:
    """Raise ValueError naming the path whose condition is not a scalar or a non-empty list of scalars."""
    for path, expected in where.items():
        if not isinstance(path, str) or not path or "" in path.split("."):
            raise ValueError(f"field path {path!r} must be dotted names such as 'status' or 'run.status'")
        values = expected if isinstance(expected, list) else [expected]
        if not values:
            raise ValueError(f"{name}[{path!r}] must list at least one value")
        for value in values:
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ValueError(f"{name}[{path!r}] must be a string, number, true, false or null, or a list of "
                                 f"them; got {type(value).__name__}")


def _lookup(data: Any, path: tuple[str, ...], allowed: frozenset[tuple[str, Any]]) -> bool:
    for part in path:
        if not isinstance(data, dict):
            return False
        data = data.get(part, _MISSING)
        if data is _MISSING:
            return False
    if isinstance(data, dict | list):
        return False
    return json_key(data) in allowed


def _glob_check(attr: str, test: Callable[[str], bool]) -> Callable[[Mapping[str, Any]], bool]:
    def check(event: Mapping[str, Any]) -> bool:
        value = event.get(attr)
        return value is not None and test(value)

    return check


class EventMatcher:
    """Every condition given must hold: globs on type/source/subject, tags, and `where` on the data."""

    def __init__(self, *, types: Iterable[str] | None = None, sources: Iterable[str] | None = None,
                 subjects: Iterable[str] | None = None, tags: Iterable[str] | None = None,
                 tags_all: Iterable[str] | None = None, where: Where | None = None) -> None:
        checks: list[Callable[[Mapping[str, Any]], bool]] = []
        for attr, patterns in (("type", types), ("source", sources), ("subject", subjects)):
            patterns = list(patterns or ())
            if patterns:
                checks.append(_glob_check(attr, compile_globs(patterns)))
        if tags:
            wanted = frozenset(tags)
            checks.append(lambda ev: not wanted.isdisjoint(ev.get("tags") or ()))
        if tags_all:
            needed = frozenset(tags_all)
            checks.append(lambda ev: needed.issubset(ev.get("tags") or ()))
        check_where(where or {})
        self._checks = tuple(checks)
        self._where = tuple(
            (tuple(path.split(".")), frozenset(map(json_key, expected if isinstance(expected, list) else [expected])))
            for path, expected in (where or {}).items())

    def matches(self, event: Mapping[str, Any], data: Callable[[], Any] | None = None) -> bool:
        """Tell whether an event passes every check; `data` returns its parsed JSON data when that is lazy."""
        for check in self._checks:
            if not check(event):
                return False
        if self._where:
            value = event.get("data") if data is None else data()
            for path, allowed in self._where:
                if not _lookup(value, path, allowed):
                    return False
        return True
