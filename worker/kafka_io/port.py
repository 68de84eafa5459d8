"""The Kafka port: everything the worker needs from Kafka, as a Protocol, in plain types.

:class:`~worker.kafka_io.clients.KafkaClients` implements it with confluent-kafka; the unit tests'
fake implements the same Protocol, so the two cannot drift apart. Nothing here imports
confluent-kafka: errors arrive as :class:`ClientError`, already classified by what the worker must
do about them (its :class:`~worker.policy.ErrorKind`; :mod:`worker.policy` says what each kind means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from worker.errors import EXIT_UNFINISHED, WorkerError
from worker.policy import ClientError
from worker.wire.types import Headers, InputRecord

Partition = tuple[str, int]


class KafkaCallError(WorkerError):
    """A client call failed; ``error`` says how (and so what to do)."""

    def __init__(self, call: str, error: ClientError) -> None:
        super().__init__(f"{call} failed: {error}")
        self.call = call
        self.error = error


# (token given to produce(), None when delivered or the error)
DeliveryReport = tuple[Any, ClientError | None]


@dataclass(frozen=True)
class PartitionProgress:
    """Where a partition's log ends, from the client's statistics (-1 when unknown)."""

    high_watermark: int
    last_stable: int
    committed: int
    position: int

    def end(self, read_committed: bool) -> int:
        return self.last_stable if read_committed and self.last_stable >= 0 else self.high_watermark


@dataclass
class ClientEvents:
    """Callbacks from the client into the worker. They run on the thread that polls (the main thread)."""

    on_assigned: Callable[[list[Partition]], None]
    on_revoked: Callable[[list[Partition]], None]
    on_lost: Callable[[list[Partition]], None]
    on_error: Callable[[ClientError], None] = lambda error: None
    on_progress: Callable[[dict[Partition, PartitionProgress]], None] = lambda progress: None
    # Called between the attempts of a long start-up call; may raise to give up (e.g. access refused).
    on_wait: Callable[[], None] = lambda: None
    # A broker answered requests over an authenticated connection since the last statistics: proof
    # that the cluster accepts the worker's credentials again, even when no record flows.
    on_broker_answers: Callable[[], None] = lambda: None
    # The group coordinator answered since the last statistics (a heartbeat, a join, a commit): proof that
    # the consumer is still in touch with its group.
    on_group_answers: Callable[[], None] = lambda: None
    # The outcome of an offset commit the consumer made (at-least-once): None when it succeeded.
    on_commit: Callable[[ClientError | None], None] = lambda error: None


class KafkaPort(Protocol):
    """The consumer and producer of one worker, every call bounded in time.

    produce() raises ``BufferError`` while the local queue is full and :class:`KafkaCallError`
    for anything else; the other calls raise :class:`KafkaCallError`.
    """

    transactional: bool
    read_committed: bool

    def start(self, destination_topics: Sequence[str] = ()) -> None: ...

    def close(self, timeout_s: float, exit_code: int = EXIT_UNFINISHED) -> None:
        """Leave the group within ``timeout_s``, or the watchdog ends the process with ``exit_code``."""
        ...

    # consuming
    def poll(self, max_messages: int, timeout_s: float) -> list[InputRecord]: ...

    def pause(self, partitions: Sequence[Partition]) -> None: ...

    def resume(self, partitions: Sequence[Partition]) -> None: ...

    def assignment(self) -> list[Partition]: ...

    def seek(self, positions: Mapping[Partition, int]) -> dict[Partition, int]:
        """Move each partition's fetch position; returns those it could not move (their fetch goes on where it was)."""
        ...

    def store_offsets(self, positions: Mapping[Partition, int]) -> None: ...

    # producing
    def max_record_bytes(self, topic: str) -> int: ...

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, token: Any) -> None: ...

    def serve(self, timeout_s: float) -> None: ...

    def take_reports(self) -> list[DeliveryReport]: ...

    def purge_queued(self) -> None: ...

    def flush(self, timeout_s: float) -> int: ...

    # transactions (exactly-once)
    def begin_transaction(self) -> None: ...

    def send_offsets(self, positions: Mapping[Partition, int], timeout_s: float) -> None: ...

    def commit_transaction(self, timeout_s: float) -> None: ...

    def abort_transaction(self, timeout_s: float) -> None: ...
