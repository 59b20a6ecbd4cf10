"""`since` and `start` times Kafka cannot look up (before 1970) are a 400 naming the field, not a 500."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.problems import Problem
from app.routes.stream import check_time, parse_since


@pytest.mark.parametrize("value", ["1900-01-01", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00"])
def test_a_since_before_1970_is_a_400_naming_since(value: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_since(value)
    assert caught.value.status == 400 and caught.value.field == "since"


def test_a_connection_start_before_1970_is_a_400_naming_start() -> None:
    with pytest.raises(Problem) as caught:
        check_time(datetime(1900, 1, 1), "start")
    assert caught.value.status == 400 and caught.value.field == "start"


def test_the_epoch_and_later_are_accepted() -> None:
    assert parse_since("1970-01-01T00:00:00Z") == datetime(1970, 1, 1, tzinfo=UTC)
    assert check_time(datetime(2026, 1, 1), "start") == datetime(2026, 1, 1, tzinfo=UTC)
