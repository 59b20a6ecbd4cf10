"""Registry helpers without a broker: parsing, schema identity, and compatibility verdicts with reasons."""

from __future__ import annotations

import json

import pytest

from streams.errors import InvalidCompatibilityLevel, InvalidSchema
from streams.schema.compat import check_level, incompatibilities, parse_schema


def record(*fields: dict[str, object], name: str = "Order") -> dict[str, object]:
    return {"type": "record", "name": name, "namespace": "shop", "fields": list(fields)}


def rec(*fields: dict[str, object], name: str = "Order") -> str:
    return json.dumps(record(*fields, name=name))


ID = {"name": "id", "type": "string"}
QTY = {"name": "qty", "type": "int"}
V1 = rec(ID, QTY)


def check(new: str, level: str, *old: str) -> list[str]:
    """Return the reasons `new` breaks `level` against `old` versions (numbered from 1)."""
    versions = [(i, parse_schema(s).avro) for i, s in enumerate(old, 1)]
    return incompatibilities(parse_schema(new).avro, versions, level)


# (new schema, level, compatible?) against V1
VERDICTS = [
    (rec(ID, QTY, {"name": "email", "type": "string"}), "BACKWARD", False),
    (rec(ID, QTY, {"name": "email", "type": "string", "default": ""}), "BACKWARD", True),
    (rec(ID), "BACKWARD", True),
    (rec(ID), "FORWARD", False),
    (rec(ID, QTY, {"name": "email", "type": "string"}), "FORWARD", True),
    (rec(ID, {"name": "qty", "type": "long"}), "BACKWARD", True),
    (rec(ID, {"name": "qty", "type": "long"}), "FULL", False),
    (rec(ID, {"name": "qty", "type": "string"}), "NONE", True),
    (rec(ID, QTY, name="Renamed"), "BACKWARD", False),
]


@pytest.mark.parametrize(("new", "level", "ok"), VERDICTS, ids=[
    "backward-add-without-default", "backward-add-with-default", "backward-remove", "forward-remove",
    "forward-add-without-default", "backward-promote-int-long", "full-promote-int-long", "none-anything",
    "backward-rename-record",
])
def test_verdict_matches_avro_resolution_rules(new: str, level: str, ok: bool) -> None:
    assert (check(new, level, V1) == []) is ok


def test_added_field_without_default_names_the_field_and_the_fix() -> None:
    [message] = check(rec(ID, QTY, {"name": "email", "type": "string"}), "BACKWARD", V1)
    assert message.startswith("BACKWARD: the new schema cannot read data written with version 1")
    assert "'shop.Order.email'" in message and 'give it a "default"' in message


def test_removed_field_under_forward_says_to_keep_it() -> None:
    [message] = check(rec(ID), "FORWARD", V1)
    assert "'shop.Order.qty' was removed" in message and "keep the field" in message


def test_type_change_names_both_types_and_the_promotions() -> None:
    [message] = check(rec(ID, {"name": "qty", "type": "string"}), "BACKWARD", V1)
    assert "'shop.Order.qty' is string in the new schema but int in version 1" in message
    assert "int->long" in message


def test_nested_change_names_the_path_inside_arrays() -> None:
    sku = {"name": "sku", "type": "string"}
    old = rec(ID, {"name": "lines", "type": {"type": "array", "items": record(QTY, name="Line")}})
    new = rec(ID, {"name": "lines", "type": {"type": "array", "items": record(QTY, sku, name="Line")}})
    [message] = check(new, "BACKWARD", old)
    assert "'shop.Order.lines[].sku' was added without a default" in message


def test_non_transitive_level_checks_only_the_latest_version() -> None:
    v2 = rec(ID, {"name": "qty", "type": "int", "default": 0})
    assert check(rec(ID), "FORWARD", V1, v2) == []
    [message] = check(rec(ID), "FORWARD_TRANSITIVE", V1, v2)
    assert "version 1" in message


def test_first_version_is_always_compatible() -> None:
    assert check(V1, "FULL_TRANSITIVE") == []


def test_respelled_schema_has_the_same_identity() -> None:
    respelled = json.dumps(
        {"fields": [ID, {"type": "int", "name": "qty"}], "name": "shop.Order", "type": "record"}, indent=4
    )
    assert parse_schema(respelled).canonical == parse_schema(V1).canonical


def test_a_new_default_or_doc_is_a_different_schema() -> None:
    with_default = rec(ID, {"name": "qty", "type": "int", "default": 0})
    with_doc = json.dumps({**json.loads(V1), "doc": "orders"})
    keys = {parse_schema(s).canonical for s in (V1, with_default, with_doc)}
    assert len(keys) == 3


def test_parsed_text_keeps_the_registrants_spelling_without_whitespace() -> None:
    assert parse_schema(json.dumps(json.loads(V1), indent=2)).text == json.dumps(json.loads(V1),
                                                                                 separators=(",", ":"))


@pytest.mark.parametrize(("text", "reason"), [
    ("nope", "not JSON"),
    ('{"type": "record", "name": "X"}', "not valid Avro"),
    ('{"type": "enum", "name": "E", "symbols": ["A", "A"]}', "not valid Avro"),
    (rec({"name": "n", "type": "int", "default": "x"}), "not valid Avro"),
    ('"nosuchtype"', "not valid Avro"),
], ids=["not-json", "record-without-fields", "duplicate-enum-symbol", "default-of-wrong-type",
        "unknown-type"])
def test_invalid_schema_raises_invalid_schema(text: str, reason: str) -> None:
    with pytest.raises(InvalidSchema, match=reason) as info:
        parse_schema(text)
    assert (info.value.status, info.value.error_code) == (422, 42201)


def test_check_level_accepts_any_case_and_refuses_unknown_levels() -> None:
    assert check_level("full_transitive") == "FULL_TRANSITIVE"
    with pytest.raises(InvalidCompatibilityLevel, match="must be one of"):
        check_level("SIDEWAYS")


@pytest.mark.parametrize("level", ["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FULL", "FULL_TRANSITIVE"])
def test_envelope_with_recipients_is_compatible_with_the_envelope_before_it(level: str) -> None:
    from streams.schema.codec import load_schema_text
    from streams.settings import ROOT

    old = load_schema_text(ROOT / "tests" / "fixtures" / "envelope-v1.avsc")
    new = load_schema_text(ROOT / "schemas" / "envelope.avsc")
    assert "recipients" in new and "recipients" not in old
    assert check(new, level, old) == []
