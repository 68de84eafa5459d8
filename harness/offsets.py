"""What a topic holds and what a consumer group has committed and owns, read without joining the group."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

# What a group coordinator answers while it is still loading or moving (the KafkaError built from
# these codes does not set retriable(), so they are listed).
COORDINATOR_NOT_YET = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT}


def _end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (high watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return _end_offsets(consumer, topic)
    finally:
        consumer.close()


def output_count(bootstrap: str, topic: str) -> int:
    """End offsets summed: cheap progress, counts every record written (control records too)."""
    return sum(end_offsets(bootstrap, topic).values())


def committed_and_end_offsets(
    bootstrap: str, group: str, topic: str, timeout_s: float = 30
) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and the topic's end offsets.

    Retried while the broker answers with a retriable error: a freshly started broker (or one whose
    coordinator just moved) answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS for a few seconds.
    """
    deadline = time.time() + timeout_s
    while True:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            end = _end_offsets(consumer, topic)
            tps = [TopicPartition(topic, p) for p in end]
            committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
            return committed, end
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and hasattr(exc.args[0], "code") else None
            if code not in COORDINATOR_NOT_YET or time.time() > deadline:
                raise
        finally:
            consumer.close()
        time.sleep(0.5)


class CommittedOffsets:
    """Reads a group's committed offsets of one topic (a consumer that never joins the group).
    Returns None while the broker cannot answer, so callers can keep polling through an outage."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: Sequence[int]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._tps = [TopicPartition(topic, p) for p in partitions]

    def read(self, timeout_s: float = 5) -> dict[int, int] | None:
        try:
            return {tp.partition: max(tp.offset, 0) for tp in self._consumer.committed(self._tps, timeout=timeout_s)}
        except KafkaException:
            return None

    def close(self) -> None:
        self._consumer.close()


@dataclass
class CommitWait:
    complete: bool
    reason: str  # "complete", or why the wait ended without it
    seconds: float
    committed: dict[int, int]


def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    end: dict[int, int],
    until: int | None = None,
    timeout_s: float = 600,
    stall_s: float = 150,
    gone: Callable[[], str | None] = lambda: None,
) -> CommitWait:
    """Wait until the group has committed every input offset (`end`: the input's end offsets), or `until`
    of them. Ends early when the committed offsets have not moved for `stall_s`, or when `gone()` returns
    a reason (the workers are gone for good). Never raises on a broker outage."""
    offsets = CommittedOffsets(bootstrap, group, topic, list(end))
    started = last_move = time.monotonic()
    committed: dict[int, int] = {}
    last_total = -1
    try:
        while True:
            now = time.monotonic()
            read = offsets.read()
            if read is not None:
                committed = read
                done = sum(min(committed.get(p, 0), e) for p, e in end.items())
                if done >= (sum(end.values()) if until is None else until):
                    return CommitWait(True, "complete", now - started, committed)
                total = sum(committed.values())
                if total != last_total:
                    last_total, last_move = total, now
            done_at = sum(min(committed.get(p, 0), e) for p, e in end.items())
            progress = f"{done_at}/{sum(end.values())} input offsets committed"
            reason = gone()
            if reason:
                return CommitWait(False, f"{reason}; {progress}", now - started, committed)
            if now - last_move > stall_s:
                return CommitWait(False, f"no commit for {stall_s:.0f} s; {progress}", now - started, committed)
            if now - started > timeout_s:
                return CommitWait(False, f"not complete after {timeout_s:.0f} s; {progress}", now - started, committed)
            time.sleep(1.0)
    finally:
        offsets.close()


def group_assignments(bootstrap: str, group: str) -> list[list[tuple[str, int]]]:
    """The partitions assigned to each member of a consumer group (empty list while it has no members)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    return [
        [(tp.topic, tp.partition) for tp in (member.assignment.topic_partitions if member.assignment else [])]
        for member in description.members
    ]
