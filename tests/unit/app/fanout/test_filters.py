"""Event filters: each field, combinations, the canonical key, linear-time globs, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from app.fanout.filters import NOBODY, CompiledFilter, EventFilter, FilterError, Viewer, addressed_to, parse_filter


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
    ({"tags_all": ["nightly", "ci"]}, True),
    ({"tags_all": ["nightly", "other"]}, False),
    ({"tags": ["other", "ci"], "tags_all": ["nightly"]}, True),
    ({"types": ["workflow.step.[f]inished"]}, False),
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
    flt = compiled({"types": ["a.b+(c)"]})
    assert flt.matches(event(type="a.b+(c)"))
    assert not flt.matches(event(type="axb+(c)")) and not flt.matches(event(type="a.bb(c)"))


@pytest.mark.timeout(5)
@pytest.mark.parametrize("field", ["types", "sources", "subjects"])
def test_pathological_glob_finishes_against_ten_thousand_characters(field: str) -> None:
    flt = compiled({field: ["*a*a*a*a*a*a*a*a*b"]})
    attr = field.removesuffix("s")
    assert not flt.matches(event(**{attr: "a" * 10000}))
    assert flt.matches(event(**{attr: "a" * 10000 + "b"}))


def test_equal_filters_share_a_key_whatever_the_order() -> None:
    one = compiled({"types": ["b", "a"], "where": {"s": ["x", "y"]}, "topics": ["t2", "t1"]})
    two = compiled({"topics": ["t1", "t2", "t1"], "where": {"s": ["y", "x"]}, "types": ["a", "b"]})
    assert one.key == two.key and one.scope == two.scope


def test_key_of_a_filter_without_tags_all_is_unchanged() -> None:
    """Resume tokens and durable cursors carry the scope, so adding `tags_all` must not move old keys."""
    assert compiled({"types": ["a"], "tags": ["t"], "where": {"n": [1, True]}}).key == (
        '{"sources":[],"subjects":[],"tags":["t"],"topics":["default"],"types":["a"],'
        '"where":{"n":[["b",true],["n",1]]}}')


def test_tags_and_tags_all_give_different_keys() -> None:
    assert compiled({"tags": ["a", "b"]}).key != compiled({"tags_all": ["a", "b"]}).key


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
    ('{"tags_all": []}', "must not be empty"),
], ids=["malformed", "not-object", "unknown-field", "empty-list", "not-list", "bad-topic", "nested-value",
        "bad-path", "empty-membership", "empty-tag", "empty-tags-all"])
def test_parse_filter_says_what_is_wrong(raw: str, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(raw)
    assert fragment in str(info.value)


def test_parse_filter_accepts_absent_filter() -> None:
    assert parse_filter(None) == EventFilter()


@pytest.mark.parametrize(("spec", "message"), [
    ({"types": ["a"] * 50, "sources": ["b"] * 50, "tags": ["c"]}, "101 patterns and tags in all; the limit is 100"),
    ({"where": {"status": list(range(101))}}, "lists 101 values; the limit is 100"),
    ({"where": {"status": "x" * 1025}}, "at most 1024 characters"),
    ({"where": {"p" * 257: 1}}, "at most 256 characters"),
    ({"types": ["t" * 257]}, "1-256 characters"),
    ({"topics": [f"t{i}" for i in range(21)]}, "at most 20 items"),
], ids=["patterns", "where-values", "where-value-chars", "where-path", "pattern-chars", "topics"])
def test_filter_complexity_is_bounded_with_a_message_naming_the_limit(spec: dict[str, Any], message: str) -> None:
    import orjson

    with pytest.raises(FilterError, match=message.replace("(", r"\(")):
        parse_filter(orjson.dumps(spec).decode())


def test_filter_text_is_bounded() -> None:
    with pytest.raises(FilterError, match="the limit is 16384"):
        parse_filter('{"types": ["' + "a" * 16_400 + '"]}')


@pytest.mark.parametrize(("recipients", "viewer", "sees"), [
    (None, NOBODY, True),
    (["alice"], Viewer.of_stream("alice"), True),
    (["alice"], Viewer.of_stream("bob"), False),
    (["c1"], Viewer.of_stream("bob", "c1"), True),
    (["c1"], Viewer.of_history("bob", False), False),
    (["c1"], Viewer.of_history("bob", False, ["c1"]), True),
    (["alice"], Viewer.of_history("root", True), True),
    (["alice"], NOBODY, False),
], ids=["untargeted", "named", "not-named", "connection-stream", "history-not-owner", "history-owner",
        "history-admin", "no-viewer"])
def test_addressed_to_is_the_one_rule_of_targeted_delivery(recipients: list[str] | None, viewer: Viewer,
                                                           sees: bool) -> None:
    assert addressed_to(recipients, viewer) is sees
