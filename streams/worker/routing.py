"""Routing rules: which topics each event goes to, read from a versioned YAML or JSON file.

Format (version 1; JSON is accepted too, as the same structure)::

    version: 1
    rules:
      - name: failed-builds          # optional and unique; rule-<n> when missing
        match:                       # every condition must hold; no `match` holds for every event
          type: "ci.build.*"         # glob, or a list of globs of which one must match
          source: "/ci/*"
          subject: "repo-*"          # never matches an event without subject
          tags: [nightly, weekly]    # the event carries any of these tags
          tags_all: [ci, release]    # the event carries all of these tags
          data: {status: failed, build.branch: main, attempt: [2, 3]}  # fields of JSON data (dotted paths):
                                     # equality with a scalar, membership in a list of scalars
        to: [builds, alerts]         # one topic or a list
        override: true               # drop the topic the publisher asked for (header es-destination)
        final: true                  # later rules are not looked at when this one matches

Globs, tags and `data` follow `streams.matching`, the rules stream filters use too: `*` any run of
characters, `?` one character, everything else literal (`[abc]` is three characters, not a class as
fnmatch had it); `tags` = any of (before the shared matcher it meant all of: that is now `tags_all`).

Every matching rule adds its topics. The publisher's topic is added too, unless a matching rule says
`override`. An event that nothing routes goes to `settings.default_topic`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from streams.envelope import is_json_type
from streams.errors import RoutingRulesInvalid
from streams.kafka.topics import TOPIC_NAME
from streams.matching import EventMatcher, check_where
from streams.settings import Settings

VERSIONS = (1,)
TOP_KEYS = ("version", "rules")
RULE_KEYS = ("name", "match", "to", "override", "final")
MATCH_KEYS = ("type", "source", "subject", "tags", "tags_all", "data")
Route = list[tuple[str, str]]  # (topic, why): a rule name, "requested" or "default"
_UNSET = object()


class _Data:
    """The event's JSON data, parsed once and only when a rule needs it."""

    __slots__ = ("_record", "_value")

    def __init__(self, record: dict[str, Any]) -> None:
        self._record, self._value = record, _UNSET

    def value(self) -> Any:
        """Return the parsed data, or None when it is not JSON (so that no `data` condition holds)."""
        if self._value is _UNSET:
            raw, ctype = self._record.get("data"), self._record.get("datacontenttype") or ""
            try:
                self._value = orjson.loads(raw) if isinstance(raw, str) and is_json_type(ctype) else None
            except orjson.JSONDecodeError:
                self._value = None
        return self._value


class Rule:
    """One routing rule, compiled once."""

    __slots__ = ("name", "to", "match", "line", "override", "final", "_matcher")

    def __init__(self, name: str, to: tuple[str, ...], match: dict[str, Any], line: int = 0,
                 override: bool = False, final: bool = False) -> None:
        self.name, self.to, self.match, self.line = name, to, match, line
        self.override, self.final = override, final
        self._matcher = EventMatcher(types=match.get("type"), sources=match.get("source"),
                                     subjects=match.get("subject"), tags=match.get("tags"),
                                     tags_all=match.get("tags_all"), where=match.get("data"))

    def matches(self, record: dict[str, Any], data: _Data) -> bool:
        """Tell whether every condition of the rule holds for a decoded event record."""
        return self._matcher.matches(record, data.value)

    def as_dict(self) -> dict[str, Any]:
        """Return the rule as written, for listing."""
        return {"name": self.name, "match": self.match, "to": list(self.to), "override": self.override,
                "final": self.final, "line": self.line}


class RouteTable:
    """The rules of one file, in order, and the topic for events nothing routes."""

    def __init__(self, rules: list[Rule], default_topic: str, *, version: int = 1, source: str = "") -> None:
        self.rules, self.default_topic, self.version, self.source = rules, default_topic, version, source

    def route(self, record: dict[str, Any], requested: str | None = None) -> Route:
        """Return the destination topics of an event, each with the reason it goes there."""
        topics: dict[str, str] = {}
        override = False
        data = _Data(record)
        for rule in self.rules:
            if rule.matches(record, data):
                for topic in rule.to:
                    topics.setdefault(topic, rule.name)
                override = override or rule.override
                if rule.final:
                    break
        if requested is not None and not override:
            topics.setdefault(requested, "requested")
        if not topics:
            return [(self.default_topic, "default")]
        return list(topics.items())

    def as_dict(self) -> dict[str, Any]:
        """Return the table for GET /api/v1/routes."""
        return {"file": self.source, "version": self.version, "default_topic": self.default_topic,
                "rules": [r.as_dict() for r in self.rules]}


def load_rules(path: Path | str, settings: Settings) -> RouteTable:
    """Read and check a rules file, raising RoutingRulesInvalid with `file:line: what is wrong`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingRulesInvalid(f"{path}: cannot read the routing rules: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)  # strict JSON first: YAML would accept trailing commas
        except json.JSONDecodeError as exc:
            raise RoutingRulesInvalid(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        text = text.replace("\t", " ")  # valid JSON has tabs only as whitespace, which YAML refuses
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RoutingRulesInvalid(f"{where}: not valid YAML or JSON: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise RoutingRulesInvalid(f"{path}: not valid YAML or JSON: {exc}") from None
    return _Parser(path, settings).table(root)


def requested_topic_problem(topic: str, settings: Settings) -> str | None:
    """Say why a publisher-requested destination cannot be used, or return None if it can."""
    if not TOPIC_NAME.match(topic):
        return f"requested destination {topic!r} is not a valid Kafka topic name"
    if settings.is_internal(topic):
        return f"requested destination {topic!r} is internal to the service"
    return None


class _Parser:
    """Turns the YAML node tree into rules; every error names the line of the node at fault."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path, self.settings = path, settings
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: Node | None, message: str) -> RoutingRulesInvalid:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return RoutingRulesInvalid(f"{self.path}{line}: {message}")

    def value(self, node: Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            name = self.value(key) if isinstance(key, ScalarNode) else None
            if name not in allowed:
                raise self.fail(key, f"{what}: unknown key {name!r} (allowed: {', '.join(allowed)})")
            if name in out:
                raise self.fail(key, f"{what}: key {name!r} is given twice")
            out[name] = (key, value)
        return out

    def strings(self, node: Node, what: str) -> tuple[str, ...]:
        items = node.value if isinstance(node, SequenceNode) else [node]
        out = []
        for item in items:
            value = self.value(item) if isinstance(item, ScalarNode) else None
            if not isinstance(value, str) or not value:
                raise self.fail(item, f"{what} must be a non-empty string or a list of them")
            out.append(value)
        if not out:
            raise self.fail(node, f"{what} must not be an empty list")
        return tuple(out)

    def boolean(self, node: Node, what: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            raise self.fail(node, f"{what} must be true or false, got {value!r}")
        return value

    def table(self, root: Node | None) -> RouteTable:
        if root is None:
            raise self.fail(None, "the file is empty; expected `version: 1` and `rules: [...]`")
        top = self.mapping(root, "the file", TOP_KEYS)
        if "version" not in top:
            raise self.fail(root, "`version` is missing (supported: 1)")
        version = self.value(top["version"][1])
        if version not in VERSIONS or isinstance(version, bool):
            raise self.fail(top["version"][1], f"unsupported version {version!r} (supported: 1)")
        rules: list[Rule] = []
        if "rules" in top:
            node = top["rules"][1]
            if not isinstance(node, SequenceNode):
                raise self.fail(node, "`rules` must be a list")
            for index, item in enumerate(node.value, 1):
                rule = self.rule(item, index)
                if any(r.name == rule.name for r in rules):
                    raise self.fail(item, f"rule name {rule.name!r} is used twice")
                rules.append(rule)
        return RouteTable(rules, self.settings.default_topic, version=version, source=str(self.path))

    def rule(self, node: Node, index: int) -> Rule:
        fields = self.mapping(node, f"rule {index}", RULE_KEYS)
        name = f"rule-{index}"
        if "name" in fields:
            node_name = fields["name"][1]
            value = self.value(node_name) if isinstance(node_name, ScalarNode) else None
            if not isinstance(value, str) or not value:
                raise self.fail(node_name, f"rule {index}: name must be a non-empty string")
            name = value
        what = f"rule {name!r}"
        if "to" not in fields:
            raise self.fail(node, f"{what}: `to` is missing (a topic or a list of topics)")
        to = self.strings(fields["to"][1], f"{what}: to")
        for topic, item in zip(to, _items(fields["to"][1]), strict=True):
            if not TOPIC_NAME.match(topic):
                raise self.fail(item, f"{what}: {topic!r} is not a valid Kafka topic name")
            if self.settings.is_internal(topic):
                raise self.fail(item, f"{what}: {topic!r} is internal to the service (ingress, DLQ, "
                                      "registry, changelog); route to an ordinary topic")
        match = self.match(fields["match"][1], what) if "match" in fields else {}
        override = self.boolean(fields["override"][1], f"{what}: override") if "override" in fields else False
        final = self.boolean(fields["final"][1], f"{what}: final") if "final" in fields else False
        return Rule(name, tuple(dict.fromkeys(to)), match, node.start_mark.line + 1, override, final)

    def match(self, node: Node, what: str) -> dict[str, Any]:
        fields = self.mapping(node, f"{what}: match", MATCH_KEYS)
        out: dict[str, Any] = {}
        for key in ("type", "source", "subject", "tags", "tags_all"):
            if key in fields:
                out[key] = list(self.strings(fields[key][1], f"{what}: match.{key}"))
        if "data" in fields:
            data = self.mapping(fields["data"][1], f"{what}: match.data", _AnyKey())
            out["data"] = {}
            for path, (key_node, value_node) in data.items():
                if not isinstance(path, str) or not path or "" in path.split("."):
                    raise self.fail(key_node, f"{what}: match.data key {path!r} must be a dotted field path")
                value = self.value(value_node)
                try:
                    check_where({path: value}, "match.data")
                except ValueError as exc:
                    raise self.fail(value_node, f"{what}: {exc}") from None
                out["data"][path] = value
        return out


class _AnyKey(tuple[str, ...]):
    """Allowed-keys stand-in that accepts every key (for match.data)."""

    def __contains__(self, item: object) -> bool:
        return True


def _items(node: Node) -> list[Node]:
    return list(node.value) if isinstance(node, SequenceNode) else [node]
