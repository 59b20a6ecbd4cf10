"""The shared matcher: the glob language, its shortcuts, linear time, tags/tags_all and `where` equality."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import pytest

from streams.matching import EventMatcher, Glob, check_where, compile_globs, json_key

PATHOLOGICAL = "*a*a*a*a*a*a*a*a*b"


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    ("workflow.*", "workflow.step.finished", True),
    ("workflow.*", "workflow.", True),
    ("workflow.*", "workflow", False),
    ("workflow.*", "xworkflow.a", False),
    ("/ci/*", "/ci/runner-7", True),
    ("/ci/*", "/cd/runner-7", False),
    ("*.failed", "ci.build.failed", True),
    ("*.failed", "ci.build.failed.x", False),
    ("*build*", "ci.build.failed", True),
    ("*build*", "ci.test.failed", False),
    ("order.created", "order.created", True),
    ("order.created", "order.created2", False),
    ("ci.*.failed", "ci.build.failed", True),
    ("ci.*.failed", "ci.failed", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "aXbYc", True),
    ("a*b*c", "acb", False),
    ("a*bc*bc", "abcbcbc", True),
    ("repo-?", "repo-7", True),
    ("repo-?", "repo-77", False),
    ("repo-?", "repo-", False),
    ("?", "x", True),
    ("?", "", False),
    ("??", "xy", True),
    ("*?", "", False),
    ("*?", "x", True),
    ("*a?c*", "zzabcz", True),
    ("*a?c*", "zzacz", False),
    ("x*??*y", "x12y", True),
    ("x*??*y", "x1y", False),
    ("*", "", True),
    ("*", "anything at all", True),
    ("**", "x", True),
    ("a**b", "ab", True),
    ("", "", True),
    ("", "a", False),
    ("[abc]", "[abc]", True),
    ("[abc]", "a", False),
    ("[!a]", "b", False),
    ("a[*]", "a[x]", True),
    ("a\\*", "a\\zz", True),
    ("a\\*", "a*", False),
    ("a.b+(c)", "a.b+(c)", True),
    ("a.b+(c)", "axb+(c)", False),
    ("a.b+(c)", "a.bb(c)", False),
    ("Order.*", "order.created", False),
    ("*", "line\nbreak", True),
    ("a?b", "a\nb", True),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_glob_matches_the_whole_text_with_star_and_question_mark_only(pattern: str, text: str, matches: bool) -> None:
    assert Glob(pattern).match(text) is matches
    assert compile_globs([pattern])(text) is matches


def test_glob_list_matches_when_any_pattern_does() -> None:
    test = compile_globs(["order.created", "workflow.*", "*.failed", "*deploy*", "ci.?.x"])
    hits = ["order.created", "workflow.a", "x.failed", "pre-deploy-post", "ci.7.x"]
    misses = ["order.paid", "flow.a", "x.failed.y", "ci.77.x", ""]
    assert all(test(t) for t in hits) and not any(test(t) for t in misses)


def test_empty_glob_list_matches_nothing() -> None:
    assert not compile_globs([])("x")


def test_glob_agrees_with_a_reference_regex_on_random_patterns() -> None:
    rng = random.Random(9)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?[") for _ in range(rng.randint(0, 7)))
        text = "".join(rng.choice("ab[") for _ in range(rng.randint(0, 9)))
        ref = re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                           text, re.DOTALL)
        assert Glob(pattern).match(text) is (ref is not None), (pattern, text)


def test_glob_refuses_a_non_string_pattern() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        Glob(3)  # type: ignore[arg-type]


@pytest.mark.timeout(5)
@pytest.mark.parametrize("text", ["a" * 10000, "a" * 10000 + "b", "ab" * 5000, "a" * 70],
                         ids=["no-b", "b-at-end", "alternating", "seventy"])
def test_pathological_glob_finishes_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    assert Glob(PATHOLOGICAL).match(text) is text.endswith("b")
    assert compile_globs([PATHOLOGICAL, "*a?a?a?a?c*"])(text) is text.endswith("b")
    assert time.perf_counter() - started < 1.0


def event(**over: Any) -> dict[str, Any]:
    base = {"type": "workflow.step.finished", "source": "/ci/runner-7", "subject": "run-42",
            "tags": ["ci", "nightly"], "data": {"status": "failed", "attempt": 2, "ok": False, "none": None,
                                                "run": {"branch": "main"}, "list": [1, 2]}}
    base.update(over)
    return base


@pytest.mark.parametrize(("spec", "matches"), [
    ({}, True),
    ({"types": ["workflow.*"], "sources": ["/ci/*"], "subjects": ["run-??"]}, True),
    ({"subjects": ["*"]}, True),
    ({"tags": ["nightly", "other"]}, True),
    ({"tags": ["other"]}, False),
    ({"tags_all": ["nightly", "ci"]}, True),
    ({"tags_all": ["nightly", "other"]}, False),
    ({"tags": ["other", "ci"], "tags_all": ["nightly"]}, True),
    ({"tags": ["ci"], "tags_all": ["weekly"]}, False),
    ({"tags": []}, True),
    ({"where": {"status": "failed"}}, True),
    ({"where": {"status": ["ok", "failed"]}}, True),
    ({"where": {"status": ["ok"]}}, False),
    ({"where": {"attempt": 2.0}}, True),
    ({"where": {"attempt": "2"}}, False),
    ({"where": {"attempt": True}}, False),
    ({"where": {"ok": False}}, True),
    ({"where": {"ok": 0}}, False),
    ({"where": {"none": None}}, True),
    ({"where": {"missing": None}}, False),
    ({"where": {"run.branch": "main"}}, True),
    ({"where": {"run.branch.x": "main"}}, False),
    ({"where": {"run": "main"}}, False),
    ({"where": {"list": 1}}, False),
    ({"where": {"status": "failed", "attempt": [3]}}, False),
], ids=lambda v: str(v) if isinstance(v, bool) else None)
def test_event_matcher_checks_every_given_condition(spec: dict[str, Any], matches: bool) -> None:
    assert EventMatcher(**spec).matches(event()) is matches


def test_event_without_subject_or_tags_fails_those_conditions() -> None:
    assert not EventMatcher(subjects=["*"]).matches(event(subject=None))
    assert not EventMatcher(tags=["ci"]).matches(event(tags=None))
    assert EventMatcher(tags_all=[]).matches(event(tags=None))


def test_where_never_matches_data_that_is_not_a_json_object() -> None:
    matcher = EventMatcher(where={"status": "failed"})
    assert not matcher.matches(event(data="status=failed"))
    assert not matcher.matches(event(data=None))
    assert not matcher.matches(event(data=["failed"]))


def test_where_reads_lazy_data_only_when_the_other_conditions_hold() -> None:
    calls: list[int] = []

    def data() -> dict[str, Any]:
        calls.append(1)
        return {"status": "failed"}

    matcher = EventMatcher(types=["workflow.*"], where={"status": "failed"})
    assert matcher.matches(event(data="ignored"), data)
    assert not matcher.matches(event(type="other", data="ignored"), data)
    assert calls == [1]


@pytest.mark.parametrize(("where", "words"), [
    ({"": 1}, "dotted names"),
    ({"a..b": 1}, "dotted names"),
    ({"a": []}, "at least one value"),
    ({"a": {"b": 1}}, "got dict"),
    ({"a": [1, [2]]}, "got list"),
], ids=["empty-path", "empty-part", "empty-list", "object", "nested-list"])
def test_where_refuses_what_has_no_json_equality(where: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_where(where)
    with pytest.raises(ValueError, match=words):
        EventMatcher(where=where)


def test_json_key_keeps_booleans_apart_from_numbers() -> None:
    assert json_key(1) == json_key(1.0) and json_key(True) != json_key(1) and json_key(None) != json_key(0)
