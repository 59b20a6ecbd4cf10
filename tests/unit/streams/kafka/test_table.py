"""CompactedTable over an in-memory log: records and tombstones applied in offset order, start and
catch_up wait for what was written before, put reads its own write, and tables sharing a topic agree."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from streams.errors import BrokerUnavailable
from streams.kafka import clients
from streams.kafka import table as table_module
from streams.kafka.table import CompactedTable
from streams.settings import Settings

TOPIC = "table-under-test"
SETTINGS = Settings(default_replication_factor=3)


@dataclass(frozen=True)
class Record:
    """The fields of an aiokafka ConsumerRecord the table reads."""

    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Metadata:
    """What a producer's send future resolves to."""

    offset: int


class FakeLog:
    """One partition of a topic in memory, shared by every fake client of one test."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.grew = asyncio.Condition()
        self.ensured: list[tuple[str, dict[str, Any]]] = []
        self.fail_start = False
        self.end_error: Exception | None = None  # raised by end_offsets (a raw aiokafka error, say)
        self.stopped: list[str] = []

    async def append(self, key: bytes | None, value: bytes | None) -> int:
        """Write one record (as another process would) and wake the readers; return its offset."""
        self.records.append(Record(len(self.records), key, value))
        async with self.grew:
            self.grew.notify_all()
        return len(self.records) - 1

    async def put(self, key: str, value: dict[str, Any] | None) -> int:
        """Write a JSON value or, for None, a tombstone."""
        return await self.append(key.encode(), None if value is None else orjson.dumps(value))


class FakeConsumer:
    """A manually assigned reader of the FakeLog: getmany waits up to timeout_ms for new records."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.position = 0

    async def start(self) -> None:
        if self.log.fail_start:
            raise KafkaConnectionError("no broker")

    async def stop(self) -> None:
        self.log.stopped.append("consumer")

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert partitions == [TopicPartition(TOPIC, 0)]

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.position = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.log.end_error is not None:
            raise self.log.end_error
        return {tp: len(self.log.records) for tp in partitions}

    async def getmany(self, tp: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (stop() would hang)
            async with asyncio.timeout(timeout_ms / 1000), self.log.grew:
                await self.log.grew.wait_for(lambda: len(self.log.records) > self.position)
        except TimeoutError:
            return {}
        batch, self.position = self.log.records[self.position:], len(self.log.records)
        return {tp: batch}


class FakeProducer:
    """Appends to the FakeLog; send returns a future of the record's metadata, as aiokafka's does."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.log.stopped.append("producer")

    async def send(self, topic: str, value: bytes | None, *, key: bytes, partition: int) -> asyncio.Future[Metadata]:
        assert (topic, partition) == (TOPIC, 0)
        sent: asyncio.Future[Metadata] = asyncio.get_running_loop().create_future()
        sent.set_result(Metadata(await self.log.append(key, value)))
        return sent


class FakeTopics:
    """The TopicManager calls the table makes on start: ensure the topic, count the brokers."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log

    async def __aenter__(self) -> FakeTopics:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def ensure(self, name: str, **spec: Any) -> None:
        self.log.ensured.append((name, spec))

    async def broker_count(self) -> int:
        return 1


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    """Return the in-memory topic that every table built in the test reads and writes."""
    shared = FakeLog()
    monkeypatch.setattr(table_module, "TopicManager", lambda settings: FakeTopics(shared))
    monkeypatch.setattr(clients, "producer", lambda settings, purpose, **options: FakeProducer(shared))
    monkeypatch.setattr(clients, "reader", lambda settings, purpose, **options: FakeConsumer(shared))
    return shared


@pytest.fixture
async def tables(log: FakeLog) -> Any:
    """Return a factory of started tables on TOPIC; all are stopped after the test."""
    made: list[CompactedTable] = []

    async def make() -> CompactedTable:
        table = CompactedTable(SETTINGS, TOPIC)
        made.append(table)
        await table.start()
        return table

    yield make
    for table in made:
        await table.stop()


async def test_start_creates_a_one_partition_compacted_topic_kept_forever(log: FakeLog, tables: Any) -> None:
    await tables()
    assert log.ensured == [(TOPIC, {"partitions": 1, "cleanup_policy": "compact", "retention_ms": -1,
                                    "replication_factor": 1})]


async def test_start_applies_records_and_tombstones_in_offset_order(log: FakeLog, tables: Any) -> None:
    await log.put("a", {"v": 1})
    await log.put("b", {"v": 1})
    await log.put("a", None)
    await log.put("b", {"v": 2})
    await log.put("c", None)
    await log.put("c", {"v": 3})
    table = await tables()
    assert table.get("a") is None and table.get("b") == {"v": 2} and table.get("c") == {"v": 3}
    assert sorted(table.items()) == [("b", {"v": 2}), ("c", {"v": 3})] and len(table) == 2


async def test_catch_up_waits_for_what_another_process_wrote_before_the_call(log: FakeLog, tables: Any) -> None:
    table = await tables()
    for n in range(50):
        await log.put(f"k{n % 5}", {"n": n})
    await log.put("k0", None)
    await table.catch_up()
    assert table.get("k0") is None and table.get("k4") == {"n": 49} and len(table) == 4


async def test_put_returns_once_the_write_is_applied_locally(tables: Any) -> None:
    table = await tables()
    await table.put("conn-1", {"filter": {"topics": ["t"]}})
    assert table.get("conn-1") == {"filter": {"topics": ["t"]}}
    await table.put("conn-1", None)
    assert table.get("conn-1") is None and len(table) == 0


async def test_tables_on_one_topic_see_the_same_keys(tables: Any) -> None:
    first, second = await tables(), await tables()
    await first.put("a", {"from": "first"})
    await second.put("b", {"from": "second"})
    await first.catch_up()
    await second.catch_up()
    assert sorted(first.items()) == sorted(second.items()) == [("a", {"from": "first"}), ("b", {"from": "second"})]


async def test_listeners_hear_every_change_with_none_for_a_delete(tables: Any) -> None:
    table = await tables()
    heard: list[tuple[str, dict[str, Any] | None]] = []
    table.subscribe(lambda key, value: heard.append((key, value)))
    await table.put("a", {"v": 1})
    await table.put("a", None)
    assert heard == [("a", {"v": 1}), ("a", None)]


async def test_records_without_a_key_or_not_json_are_skipped_and_reading_goes_on(log: FakeLog, tables: Any) -> None:
    await log.append(None, b'{"v": 1}')
    await log.append(b"bad", b"not json")
    await log.put("good", {"v": 1})
    table = await tables()
    assert list(table.items()) == [("good", {"v": 1})]


async def test_kafka_error_on_start_raises_broker_unavailable_and_closes_the_clients(log: FakeLog) -> None:
    log.fail_start = True
    table = CompactedTable(SETTINGS, TOPIC)
    with pytest.raises(BrokerUnavailable, match=TOPIC):
        await table.start()
    assert sorted(log.stopped) == ["consumer", "producer"]


async def test_put_before_start_raises_broker_unavailable() -> None:
    with pytest.raises(BrokerUnavailable, match="not connected"):
        await CompactedTable(SETTINGS, TOPIC).put("a", {"v": 1})


async def test_stop_twice_is_harmless(log: FakeLog) -> None:
    table = CompactedTable(SETTINGS, TOPIC)
    await table.start()
    await table.stop()
    await table.stop()
    assert sorted(log.stopped) == ["consumer", "producer"]


async def test_a_raw_kafka_error_while_catching_up_on_start_is_broker_unavailable_and_leaves_nothing_open(
        log: FakeLog) -> None:
    log.end_error = KafkaTimeoutError()  # the edge's connect loop retries StreamError only: raw ones left it 503
    table = CompactedTable(SETTINGS, TOPIC)
    with pytest.raises(BrokerUnavailable, match=TOPIC):
        await table.start()
    assert sorted(log.stopped) == ["consumer", "producer"] and table._reader is None
    log.end_error = None
    await table.start()  # the caller's retry works
    await table.stop()


async def test_a_read_back_that_times_out_is_broker_unavailable(tables: Any) -> None:
    table = await tables()
    with pytest.raises(BrokerUnavailable, match="not read back"):
        await table._wait_applied(99, timeout=0.05)


async def test_a_failing_listener_does_not_stop_the_table(tables: Any) -> None:
    table = await tables()
    heard: list[str] = []

    def listener(key: str, value: dict[str, Any] | None) -> None:
        heard.append(key)
        if key == "bad":
            raise RuntimeError("listener bug")

    table.subscribe(listener)
    await table.put("bad", {"v": 1})
    await table.put("good", {"v": 2})
    assert heard == ["bad", "good"] and table.get("good") == {"v": 2}


async def test_the_reader_restarts_after_a_failure_from_the_first_record_not_applied(
        log: FakeLog, tables: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    table = await tables()
    consumer = table._consumer
    real = consumer.getmany
    failures = [RuntimeError("reader bug")]

    async def flaky(tp: TopicPartition, timeout_ms: int) -> Any:
        if failures:
            raise failures.pop()
        return await real(tp, timeout_ms)

    monkeypatch.setattr(consumer, "getmany", flaky)
    async with asyncio.timeout(5):
        while failures:  # the read in flight ends (500 ms), the next one fails
            await asyncio.sleep(0.01)
        await log.put("a", {"v": 1})
        while table.get("a") is None:
            await asyncio.sleep(0.01)
    assert table._reader is not None and not table._reader.done()


async def test_an_ignored_key_is_written_for_others_but_never_parsed_back(log: FakeLog, tables: Any) -> None:
    other = await tables()
    own = CompactedTable(SETTINGS, TOPIC, ignore=frozenset({"edge-1"}))
    await own.start()
    try:
        await own.put("edge-1", {"streams": [1, 2, 3]})  # returns: the write was read back, then skipped
        await own.put("edge-2", {"streams": []})
        await other.catch_up()
        assert own.get("edge-1") is None and own.get("edge-2") == {"streams": []}
        assert other.get("edge-1") == {"streams": [1, 2, 3]}
    finally:
        await own.stop()
