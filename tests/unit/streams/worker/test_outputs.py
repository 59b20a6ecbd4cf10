"""Which write errors send a record to the DLQ (permanent) and which hold its partition (retriable)."""

from __future__ import annotations

import pytest
from aiokafka import errors

from streams.errors import BrokerUnavailable
from streams.worker.outputs import Output, Work, is_permanent


@pytest.mark.parametrize("exc", [errors.MessageSizeTooLargeError(), errors.RecordListTooLargeError(),
                                 errors.InvalidTopicError(), errors.TopicAuthorizationFailedError()])
def test_errors_about_the_record_or_topic_are_permanent(exc: Exception) -> None:
    assert is_permanent(exc)


@pytest.mark.parametrize("exc", [errors.NotLeaderForPartitionError(), errors.RequestTimedOutError(),
                                 errors.NotEnoughReplicasError(), errors.KafkaTimeoutError(),
                                 errors.UnknownTopicOrPartitionError(), errors.KafkaConnectionError(),
                                 BrokerUnavailable("down"), AssertionError("unrecognized partition")])
def test_errors_about_the_cluster_state_are_retriable(exc: Exception) -> None:
    assert not is_permanent(exc)


def test_work_completes_with_its_last_acknowledgment_and_lets_go_of_its_outputs() -> None:
    done = []
    outputs = [Output("t", b"v", b"k", None), Output("t", b"w", b"k", None)]
    work = Work(outputs, done.append)
    outputs[0].work.output_done()
    assert not done
    outputs[1].work.output_done()
    assert done == [work] and work.outputs == []
