"""Pure Avro helpers for the schema registry: parse, identity, and compatibility with reasons.

The verdict always comes from `avro.compatibility.ReaderWriterCompatibilityChecker`; the walk below
only explains it, naming the field and the fix, because the checker's own messages lose the pairing
between a location and its reason once several problems are merged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import avro.schema
import fastavro
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)
from avro.schema import NamedSchema

from streams.errors import InvalidCompatibilityLevel, InvalidSchema

Level = Literal[
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"
]
LEVELS: tuple[str, ...] = (
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE",
)
PROMOTIONS = "int->long/float/double, long->float/double, float->double, string<->bytes"


@dataclass(frozen=True)
class ParsedSchema:
    """A schema parsed once: its text as registered, its identity key, and the avro object."""

    text: str
    canonical: str
    avro: avro.schema.Schema


def parse_schema(schema_str: str) -> ParsedSchema:
    """Parse Avro schema text, raising InvalidSchema with the parser's reason."""
    try:
        data = json.loads(schema_str)
    except (TypeError, ValueError) as exc:
        raise InvalidSchema(f"schema is not JSON: {exc}", field="schema") from exc
    try:
        fastavro.parse_schema(data)  # also validates field defaults, which avro does not
        parsed = avro.schema.make_avsc_object(data)
    except Exception as exc:  # both parsers raise several kinds (SchemaParseException, KeyError, ...)
        raise InvalidSchema(f"schema is not valid Avro: {exc}", field="schema") from exc
    canonical = json.dumps(parsed.to_json(), separators=(",", ":"), sort_keys=True)
    return ParsedSchema(json.dumps(data, separators=(",", ":")), canonical, parsed)


def check_level(level: str) -> str:
    """Return `level` in upper case, raising InvalidCompatibilityLevel if it is unknown."""
    upper = str(level).upper()
    if upper not in LEVELS:
        raise InvalidCompatibilityLevel(
            f"compatibility level must be one of {', '.join(LEVELS)}, got {level!r}", field="compatibility"
        )
    return upper


def incompatibilities(
    new: avro.schema.Schema,
    existing: list[tuple[int, avro.schema.Schema]],
    level: str,
    *,
    all_given: bool = False,
) -> list[str]:
    """Return why `new` breaks `level` against `existing` (oldest first, live versions); [] if it does not.

    Non-transitive levels look at the last of `existing` only, unless `all_given` says the caller
    already chose the versions to check.
    """
    level = check_level(level)
    if level == "NONE" or not existing:
        return []
    targets = existing if all_given or level.endswith("_TRANSITIVE") else existing[-1:]
    messages: list[str] = []
    for version, old in targets:
        if level.startswith(("BACKWARD", "FULL")):
            messages += _explain(new, old, level, f"version {version}", reader_is_new=True)
        if level.startswith(("FORWARD", "FULL")):
            messages += _explain(old, new, level, f"version {version}", reader_is_new=False)
    return messages


def _explain(reader: Any, writer: Any, level: str, old: str, *, reader_is_new: bool) -> list[str]:
    checker = ReaderWriterCompatibilityChecker()
    verdict = checker.get_compatibility(reader, writer)
    if verdict.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    names = ("the new schema", old) if reader_is_new else (old, "the new schema")
    walk = _Walk(checker, names, reader_is_new)
    reasons = list(dict.fromkeys(walk.node(reader, writer, _root(reader))))
    if not reasons:  # the walk found nothing more precise: fall back to the checker's own words
        reasons = [f"{'; '.join(sorted(verdict.messages))} at {', '.join(sorted(verdict.locations))}"]
    head = f"{level}: {names[0]} cannot read data written with {names[1]}"
    return [f"{head}: {reason}" for reason in reasons]


def _root(schema: Any) -> str:
    return schema.fullname if isinstance(schema, NamedSchema) else str(schema.type)


def _describe(schema: Any) -> str:
    if schema.type == "union":
        return "union [" + ", ".join(_describe(s) for s in schema.schemas) + "]"
    return f"{schema.type} {schema.fullname}" if isinstance(schema, NamedSchema) else str(schema.type)


def _same_kind(a: Any, b: Any) -> bool:
    if a.type != b.type:
        return False
    return not isinstance(a, NamedSchema) or schema_name_equals(a, b)


class _Walk:
    """Walk a reader/writer pair and say, per place, what breaks and how to fix it."""

    def __init__(
        self, checker: ReaderWriterCompatibilityChecker, names: tuple[str, str], reader_is_new: bool
    ) -> None:
        self.checker, self.reader_name, self.writer_name = checker, names[0], names[1]
        self.reader_is_new = reader_is_new
        self.seen: set[tuple[int, int]] = set()

    def broken(self, reader: Any, writer: Any) -> bool:
        result = self.checker.get_compatibility(reader, writer)
        return result.compatibility is SchemaCompatibilityType.incompatible

    def node(self, reader: Any, writer: Any, path: str) -> Iterator[str]:
        if (id(reader), id(writer)) in self.seen or not self.broken(reader, writer):
            return
        self.seen.add((id(reader), id(writer)))
        if writer.type == "union":
            yield from self.writer_union(reader, writer, path)
        elif reader.type == "union":
            yield from self.reader_union(reader, writer, path)
        elif reader.type != writer.type:
            yield self.mismatch(reader, writer, path)
        elif isinstance(reader, NamedSchema) and not schema_name_equals(reader, writer):
            yield (f"'{path}' is named {reader.fullname} in {self.reader_name} but {writer.fullname} in "
                   f"{self.writer_name}; keep the name or list the old one in \"aliases\"")
        elif reader.type in ("record", "error"):
            yield from self.record(reader, writer, path)
        elif reader.type == "array":
            yield from self.node(reader.items, writer.items, f"{path}[]")
        elif reader.type == "map":
            yield from self.node(reader.values, writer.values, f"{path}{{}}")
        elif reader.type == "enum":
            missing = sorted(set(writer.symbols) - set(reader.symbols))
            yield (f"enum '{path}' in {self.reader_name} lacks symbols {missing} that {self.writer_name} "
                   f"can write; add them, or give the enum a \"default\" symbol")
        elif reader.type == "fixed":
            yield (f"fixed '{path}' has size {reader.size} in {self.reader_name} but {writer.size} in "
                   f"{self.writer_name}; a fixed size cannot change")

    def record(self, reader: Any, writer: Any, path: str) -> Iterator[str]:
        for field in reader.fields:
            where = f"{path}.{field.name}"
            found = lookup_writer_field(writer_schema=writer, reader_field=field)
            if found is not None:
                yield from self.node(field.type, found.type, where)
            elif not field.has_default:
                if self.reader_is_new:
                    yield (f"field '{where}' was added without a default, so records written with "
                           f"{self.writer_name} have no value for it; give it a \"default\"")
                else:
                    yield (f"field '{where}' was removed, and {self.reader_name} declares it without a "
                           f"default, so its readers have no value for it; keep the field")

    def writer_union(self, reader: Any, writer: Any, path: str) -> Iterator[str]:
        unreadable = []
        for branch in writer.schemas:
            if not self.broken(reader, branch):
                continue
            candidates = reader.schemas if reader.type == "union" else [reader]
            match = next((r for r in candidates if _same_kind(r, branch)), None)
            if match is not None:
                yield from self.node(match, branch, path)
            else:
                unreadable.append(_describe(branch))
        if unreadable:
            yield (f"'{path}' is {_describe(reader)} in {self.reader_name} but {_describe(writer)} in "
                   f"{self.writer_name}, and {self.reader_name} cannot read its {', '.join(unreadable)} "
                   f"branch; add {'those branches' if len(unreadable) > 1 else 'that branch'} to the reader "
                   f"side or keep the type")

    def reader_union(self, reader: Any, writer: Any, path: str) -> Iterator[str]:
        match = next((r for r in reader.schemas if _same_kind(r, writer)), None)
        if match is not None:
            yield from self.node(match, writer, path)
        else:
            yield (f"'{path}' is {_describe(reader)} in {self.reader_name}, with no branch that can read "
                   f"{_describe(writer)} written by {self.writer_name}; add that branch")

    def mismatch(self, reader: Any, writer: Any, path: str) -> str:
        return (f"'{path}' is {_describe(reader)} in {self.reader_name} but {_describe(writer)} in "
                f"{self.writer_name}, and {reader.type} cannot read {writer.type} (allowed promotions: "
                f"{PROMOTIONS}); keep the type or add a new field instead")
