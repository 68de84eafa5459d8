"""Back-pressure: pause consumption while too much is in flight, resume at half (hysteresis).

Too much is either too many records or too many bytes: a count alone lets 4,096 records of a
megabyte each (plus their results and the client's copies) past a container's memory limit.

Pausing keeps the consumer polling, so it stays in its group. Partitions assigned while paused
are paused at once. ``freeze`` pauses for good (shutdown, fatal errors): nothing new is read.
"""

from __future__ import annotations

import logging
from typing import Sequence

from worker.kafka_io import KafkaPort, Partition

log = logging.getLogger(__name__)


class Backpressure:
    def __init__(self, port: KafkaPort, limit: int, byte_limit: int | None = None) -> None:
        self._port = port
        self._limit = limit
        self._byte_limit = byte_limit
        self.paused = False
        self.frozen = False

    def update(self, in_flight: int, in_flight_bytes: int = 0, hold: bool = False) -> None:
        """``hold``: pause whatever is in flight (records are held until the Schema Registry answers)."""
        if self.frozen:
            return
        byte_limit = self._byte_limit
        over = in_flight >= self._limit or (byte_limit is not None and in_flight_bytes >= byte_limit)
        under = in_flight < self._limit // 2 and (byte_limit is None or in_flight_bytes < byte_limit // 2)
        if not self.paused and (hold or over):
            self.paused = True
            self._port.pause(self._port.assignment())
        elif self.paused and not hold and under:
            self.paused = False
            self._port.resume(self._port.assignment())

    def on_assigned(self, partitions: Sequence[Partition]) -> None:
        if self.paused:  # freeze() pauses too
            self._port.pause(list(partitions))

    def freeze(self) -> None:
        """Stop reading for good; already-consumed records still finish."""
        if not self.frozen:
            self.frozen = True
            self.paused = True
            try:
                self._port.pause(self._port.assignment())
            except Exception as exc:  # noqa: BLE001 - stopping anyway; unpaused partitions only prefetch
                log.warning("could not pause the partitions: %s", exc)
