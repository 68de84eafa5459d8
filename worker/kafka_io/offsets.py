"""Offset bookkeeping: what may be committed, where to rewind, and which work is stale. Pure Python."""

from __future__ import annotations

from collections import deque
from typing import Iterable

from worker.kafka_io.port import Partition


class OffsetTracker:
    """Which offsets of each partition may be committed.

    An offset is committable once it and every earlier offset consumed from its partition are
    done (its result or dead letter acknowledged). The commit position is the next offset to
    read, as Kafka expects. The first unfinished offset is where a replay starts.
    """

    def __init__(self) -> None:
        self._pending: dict[Partition, deque[int]] = {}
        self._done: dict[Partition, set[int]] = {}
        self._position: dict[Partition, int] = {}
        self._reported: dict[Partition, int] = {}
        self._sizes: dict[Partition, dict[int, int]] = {}  # bytes of each pending record, where given
        self.bytes = 0  # bytes of the pending records: what back-pressure bounds besides their count

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def add(self, partition: Partition, offset: int, size: int = 0) -> None:
        self._pending.setdefault(partition, deque()).append(offset)
        if size:
            self._sizes.setdefault(partition, {})[offset] = size
            self.bytes += size

    def mark_done(self, partition: Partition, offset: int) -> None:
        pending = self._pending.get(partition)
        if pending is None:
            return  # partition was revoked, lost or rewound meanwhile
        done = self._done.setdefault(partition, set())
        done.add(offset)
        sizes = self._sizes.get(partition, {})
        while pending and pending[0] in done:
            finished = pending.popleft()
            done.discard(finished)
            self.bytes -= sizes.pop(finished, 0)
            self._position[partition] = finished + 1

    def committable(self) -> dict[Partition, int]:
        """Positions that advanced since the last call."""
        changed = {p: pos for p, pos in self._position.items() if self._reported.get(p) != pos}
        self._reported.update(changed)
        return changed

    def position(self, partition: Partition) -> int | None:
        """The next offset after everything done in order (None before anything was done)."""
        return self._position.get(partition)

    def first_unfinished(self, partition: Partition) -> int | None:
        """Where a replay of ``partition`` must start: its oldest record not yet done, if any."""
        pending = self._pending.get(partition)
        return pending[0] if pending else None

    def unfinished(self) -> dict[Partition, int]:
        """First unfinished offset of every partition that has records in flight."""
        return {p: q[0] for p, q in self._pending.items() if q}

    def forget(self, partitions: Iterable[Partition]) -> None:
        for p in partitions:
            self.bytes -= sum(self._sizes.pop(p, {}).values())
            for table in (self._pending, self._done, self._position, self._reported):
                table.pop(p, None)


class PartitionEpochs:
    """A number per owned partition that changes whenever its in-flight work becomes stale.

    Work consumed from a partition carries the partition's epoch at that moment. Revoking,
    losing or rewinding the partition gives it a new epoch (or none), so anything still in the
    pipeline from before is recognised and dropped instead of being published or committed.
    """

    def __init__(self) -> None:
        self._current: dict[Partition, int] = {}
        self._next = 1

    def assign(self, partition: Partition) -> int:
        self._current[partition] = self._next
        self._next += 1
        return self._current[partition]

    def renew(self, partitions: Iterable[Partition]) -> None:
        """Make everything consumed so far from these (still owned) partitions stale."""
        for p in partitions:
            if p in self._current:
                self.assign(p)

    def release(self, partitions: Iterable[Partition]) -> None:
        for p in partitions:
            self._current.pop(p, None)

    def of(self, partition: Partition) -> int | None:
        return self._current.get(partition)

    def is_current(self, partition: Partition, epoch: int) -> bool:
        return self._current.get(partition) == epoch

    def owned(self) -> list[Partition]:
        return list(self._current)
