"""Routing rules: each kind of match, several destinations, the publisher's topic, the default, linear-time
globs, and files refused with the line that is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.errors import RoutingRulesInvalid
from streams.settings import Settings
from streams.worker.routing import RouteTable, load_rules, requested_topic_problem

SETTINGS = Settings(topic_prefix="es", ingress_topic="es.ingress", dlq_topic="es.dlq", default_topic="es.events")
RULES = """\
version: 1
rules:
  - name: by-type
    match: {type: "workflow.*"}
    to: workflows
  - name: by-source
    match: {source: ["/ci/*", "/cd/*"]}
    to: [pipelines, audit]
  - name: by-subject
    match: {subject: "repo-?"}
    to: repos
  - name: by-all-tags
    match: {tags_all: [nightly, ci]}
    to: nightly
  - name: by-any-tag
    match: {tags: [weekly, monthly]}
    to: periodic
  - name: by-data
    match: {data: {status: failed, build.branch: main, retried: false}}
    to: alerts
    override: true
  - name: by-data-membership
    match: {data: {attempt: [1, 2, 3]}}
    to: alerts
  - name: brackets
    match: {type: "[ab]"}
    to: literal
  - name: stop-here
    match: {type: "final.*"}
    to: finals
    final: true
  - name: after-final
    match: {type: "final.*"}
    to: never
"""


def record(type: str = "other", source: str = "/x", subject: str | None = None, tags: list[str] | None = None,
           data: Any = None, datacontenttype: str = "application/json") -> dict[str, Any]:
    """Return a decoded envelope record as the worker sees it (data as JSON text)."""
    text = orjson.dumps(data).decode() if data is not None and not isinstance(data, str) else data
    return {"id": "1", "type": type, "source": source, "subject": subject, "tags": tags or [],
            "data": text, "datacontenttype": datacontenttype, "extensions": {}}


@pytest.fixture
def table(tmp_path: Path) -> RouteTable:
    path = tmp_path / "routes.yaml"
    path.write_text(RULES)
    return load_rules(path, SETTINGS)


def topics(table: RouteTable, rec: dict[str, Any], requested: str | None = None) -> list[str]:
    return [topic for topic, _ in table.route(rec, requested)]


@pytest.mark.parametrize(("rec", "expected"), [
    (record(type="workflow.step.finished"), ["workflows"]),
    (record(source="/cd/prod"), ["pipelines", "audit"]),
    (record(subject="repo-7"), ["repos"]),
    (record(subject="repo-77"), ["es.events"]),
    (record(tags=["ci", "nightly", "extra"]), ["nightly"]),
    (record(tags=["nightly"]), ["es.events"]),
    (record(tags=["monthly", "extra"]), ["periodic"]),
    (record(tags=["extra"]), ["es.events"]),
    (record(data={"status": "failed", "build": {"branch": "main"}, "retried": False}), ["alerts"]),
    (record(data={"status": "failed", "build": {"branch": "dev"}, "retried": False}), ["es.events"]),
    (record(data={"status": "failed", "build": {"branch": "main"}, "retried": 0}), ["es.events"]),
    (record(data={"attempt": 2}), ["alerts"]),
    (record(data={"attempt": 4}), ["es.events"]),
    (record(data={"attempt": [1, 2, 3]}), ["es.events"]),
    (record(type="[ab]"), ["literal"]),
    (record(type="a"), ["es.events"]),
], ids=["type-glob", "source-list-of-globs", "subject-glob", "subject-glob-no-match", "all-tags",
        "missing-tag", "any-tag", "no-listed-tag", "data-equality", "data-other-value", "data-false-is-not-0",
        "data-membership", "data-not-a-member", "data-array-is-no-member", "brackets-are-literal",
        "brackets-are-no-class"])
def test_each_kind_of_match_routes_to_its_topics(table: RouteTable, rec: dict[str, Any], expected: list[str]) -> None:
    assert topics(table, rec) == expected


def test_event_matching_several_rules_goes_to_every_topic_once(table: RouteTable) -> None:
    rec = record(type="workflow.started", source="/ci/runner", subject="repo-1")
    assert topics(table, rec) == ["workflows", "pipelines", "audit", "repos"]


def test_event_matching_nothing_goes_to_the_default_topic(table: RouteTable) -> None:
    assert table.route(record(), None) == [("es.events", "default")]


def test_requested_topic_is_added_when_no_rule_overrides_it(table: RouteTable) -> None:
    assert table.route(record(type="workflow.x"), "mine") == [("workflows", "by-type"), ("mine", "requested")]
    assert table.route(record(), "mine") == [("mine", "requested")]


def test_override_rule_drops_the_requested_topic(table: RouteTable) -> None:
    rec = record(data={"status": "failed", "build": {"branch": "main"}, "retried": False})
    assert topics(table, rec, "mine") == ["alerts"]


def test_final_rule_stops_later_rules(table: RouteTable) -> None:
    assert topics(table, record(type="final.one")) == ["finals"]


def test_subject_rule_never_matches_an_event_without_subject(table: RouteTable) -> None:
    assert "repos" not in topics(table, record(subject=None))


def test_data_rules_ignore_events_whose_data_is_not_json(table: RouteTable) -> None:
    rec = record(data='{"status": "failed"}', datacontenttype="text/plain")
    assert topics(table, rec) == ["es.events"]


@pytest.mark.timeout(5)
@pytest.mark.parametrize("key", ["type", "source", "subject"])
def test_pathological_glob_finishes_against_ten_thousand_characters(tmp_path: Path, key: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f'version: 1\nrules:\n  - {{name: slow, match: {{{key}: "*a*a*a*a*a*a*a*a*b"}}, to: hit}}\n')
    table = load_rules(path, SETTINGS)
    assert topics(table, record(**{key: "a" * 10000})) == ["es.events"]
    assert topics(table, record(**{key: "a" * 10000 + "b"})) == ["hit"]


def test_json_rules_file_works_like_yaml(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(orjson.dumps({"version": 1, "rules": [{"match": {"type": "a.*"}, "to": ["t-a"]}]}).decode())
    table = load_rules(path, SETTINGS)
    assert table.route(record(type="a.b")) == [("t-a", "rule-1")]


def test_listing_shows_rules_as_written(table: RouteTable) -> None:
    listed = table.as_dict()
    assert listed["version"] == 1 and listed["default_topic"] == "es.events"
    assert listed["rules"][1] == {"name": "by-source", "match": {"source": ["/ci/*", "/cd/*"]},
                                  "to": ["pipelines", "audit"], "override": False, "final": False, "line": 6}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("version: 1\nrules:\n  - to: a\n    match: {tpye: x}\n", 4, "unknown key 'tpye'"),
    ("version: 1\nrules:\n  - match: {type: x}\n", 3, "`to` is missing"),
    ("version: 1\nrules:\n  - to: [ok, 'bad topic!']\n", 3, "not a valid Kafka topic name"),
    ("version: 1\nrules:\n  - to: es.ingress\n", 3, "internal to the service"),
    ("version: 1\nrules:\n  - to: a\n    override: maybe\n", 4, "must be true or false"),
    ("version: 2\nrules: []\n", 1, "unsupported version 2"),
    ("rules: []\n", 1, "`version` is missing"),
    ("version: 1\nrules:\n  - {name: x, to: a}\n  - {name: x, to: b}\n", 4, "used twice"),
    ("version: 1\nrules:\n  - to: a\n    match: {type: [x, 3]}\n", 4, "non-empty string"),
    ("version: 1\nrules:\n  - to: a\n    match: {tags_all: []}\n", 4, "must not be an empty list"),
    ("version: 1\nrules:\n  - to: a\n    match:\n      data: {a: {b: 1}}\n", 5, "got dict"),
    ("version: 1\nrules:\n  - to: a\n    match:\n      data: {a: []}\n", 5, "at least one value"),
    ("version: 1\nrules:\n  - to: a\n    match:\n      data: {day: 2026-01-31}\n", 5, "got date"),
    ("version: 1\nrules:\n  - to: a\n   match: {}\n", 4, "not valid YAML"),
    ('{"version": 1, "rules": [\n  {"to": "a",}\n]}\n', 2, "not valid JSON"),
    ('{"version": 1, "rules": [\n\t{"to": "a", "final": 1}\n]}\n', 2, "must be true or false"),
], ids=["unknown-match-key", "no-to", "bad-topic", "internal-topic", "bad-boolean", "bad-version",
        "no-version", "duplicate-name", "non-string-glob", "empty-tags-all", "data-object", "data-empty-list",
        "data-yaml-date", "bad-indentation", "json-trailing-comma",
        "json-with-tabs-bad-value"])
def test_malformed_rules_file_is_refused_with_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / ("routes.json" if text.startswith("{") else "routes.yaml")
    path.write_text(text)
    with pytest.raises(RoutingRulesInvalid) as caught:
        load_rules(path, SETTINGS)
    assert str(caught.value).startswith(f"{path}:{line}: ") and words in str(caught.value)


def test_missing_rules_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RoutingRulesInvalid, match="cannot read"):
        load_rules(tmp_path / "nope.yaml", SETTINGS)


@pytest.mark.parametrize(("topic", "problem"), [
    ("orders", None), ("bad topic", "not a valid Kafka topic name"), ("es.dlq", "internal"),
    ("es.worker-dedup-changelog", "internal"),
], ids=["ordinary", "invalid-name", "dlq", "changelog"])
def test_requested_topic_problem_refuses_bad_and_internal_names(topic: str, problem: str | None) -> None:
    found = requested_topic_problem(topic, SETTINGS)
    assert (found is None) if problem is None else (problem in found)


def test_shipped_rules_file_loads() -> None:
    assert load_rules(Settings().routes_file, Settings()).version == 1
