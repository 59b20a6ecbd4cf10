"""Event filters: each field, combinations, the canonical key, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from app.fanout.filters import CompiledFilter, EventFilter, FilterError, glob_regex, parse_filter


def event(**over: Any) -> dict[str, Any]:
    """Return a CloudEvents JSON dict as the edge builds it."""
    base = {"id": "e1", "source": "/ci/runner-7", "type": "workflow.step.finished", "subject": "run-42",
            "tags": ["ci", "nightly"], "data": {"status": "failed", "attempt": 2, "run": {"branch": "main"},
                                                "ok": False}, "topic": "t"}
    base.update(over)
    return base


def compiled(spec: dict[str, Any]) -> CompiledFilter:
    return CompiledFilter(EventFilter.model_validate(spec), ["default"])


@pytest.mark.parametrize(("spec", "matches"), [
    ({}, True),
    ({"types": ["workflow.*"]}, True),
    ({"types": ["workflow.step.finished"]}, True),
    ({"types": ["workflow.*.started"]}, False),
    ({"types": ["deploy.*", "workflow.step.?inished"]}, True),
    ({"types": ["workflow"]}, False),
    ({"sources": ["/ci/*"]}, True),
    ({"sources": ["/cd/*"]}, False),
    ({"subjects": ["run-42"]}, True),
    ({"subjects": ["run-4"]}, False),
    ({"tags": ["nightly", "other"]}, True),
    ({"tags": ["other"]}, False),
    ({"where": {"status": "failed"}}, True),
    ({"where": {"status": ["failed", "error"]}}, True),
    ({"where": {"status": ["ok"]}}, False),
    ({"where": {"attempt": 2.0}}, True),
    ({"where": {"ok": 0}}, False),
    ({"where": {"ok": False}}, True),
    ({"where": {"run.branch": "main"}}, True),
    ({"where": {"run": "main"}}, False),
    ({"where": {"missing": None}}, False),
    ({"types": ["workflow.*"], "tags": ["ci"], "where": {"status": ["failed"]}}, True),
    ({"types": ["workflow.*"], "tags": ["ci"], "where": {"status": ["ok"]}}, False),
    ({"sources": ["/ci/*"], "subjects": ["run-1"]}, False),
], ids=lambda v: str(v) if isinstance(v, bool) else None)
def test_filter_matches_each_field_and_combination(spec: dict[str, Any], matches: bool) -> None:
    assert compiled(spec).matches(event()) is matches


def test_subject_filter_never_matches_an_event_without_subject() -> None:
    assert not compiled({"subjects": ["*"]}).matches(event(subject=None))


def test_where_never_matches_non_json_data() -> None:
    assert not compiled({"where": {"status": "failed"}}).matches(event(data="status=failed"))


def test_glob_treats_regex_characters_literally() -> None:
    regex = glob_regex(["a.b+(c)"])
    assert regex.match("a.b+(c)") and not regex.match("axb+(c)") and not regex.match("a.bb(c)")


def test_equal_filters_share_a_key_whatever_the_order() -> None:
    one = compiled({"types": ["b", "a"], "where": {"s": ["x", "y"]}, "topics": ["t2", "t1"]})
    two = compiled({"topics": ["t1", "t2", "t1"], "where": {"s": ["y", "x"]}, "types": ["a", "b"]})
    assert one.key == two.key and one.scope == two.scope


def test_filters_on_different_topics_have_different_scopes() -> None:
    assert compiled({"topics": ["a"]}).scope != compiled({"topics": ["b"]}).scope


def test_missing_topics_use_the_default_topic() -> None:
    assert compiled({}).topics == ["default"]


@pytest.mark.parametrize(("raw", "fragment"), [
    ("{not json", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"kinds": ["x"]}', "unknown filter field"),
    ('{"types": []}', "must not be empty"),
    ('{"types": "workflow.*"}', "filter.types"),
    ('{"topics": ["bad name!"]}', "not a valid Kafka topic name"),
    ('{"where": {"status": {"a": 1}}}', "filter.where"),
    ('{"where": {"a..b": 1}}', "dotted names"),
    ('{"where": {"status": []}}', "at least one value"),
    ('{"tags": [""]}', "1-256 characters"),
], ids=["malformed", "not-object", "unknown-field", "empty-list", "not-list", "bad-topic", "nested-value",
        "bad-path", "empty-membership", "empty-tag"])
def test_parse_filter_says_what_is_wrong(raw: str, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(raw)
    assert fragment in str(info.value)


def test_parse_filter_accepts_absent_filter() -> None:
    assert parse_filter(None) == EventFilter()
