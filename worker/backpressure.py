"""Back-pressure: pause consumption while too much is in flight, resume at half (hysteresis).

Pausing keeps the consumer polling, so it stays in its group. Partitions assigned while paused
are paused at once. ``freeze`` pauses for good (shutdown, fatal errors): nothing new is read.
"""

from __future__ import annotations

import logging
from typing import Sequence

from worker.kafka_io import KafkaPort, Partition

log = logging.getLogger(__name__)


class Backpressure:
    def __init__(self, port: KafkaPort, limit: int) -> None:
        self._port = port
        self._limit = limit
        self.paused = False
        self.frozen = False

    def update(self, in_flight: int, hold: bool = False) -> None:
        """``hold``: pause whatever is in flight (records are held until the Schema Registry answers)."""
        if self.frozen:
            return
        if not self.paused and (hold or in_flight >= self._limit):
            self.paused = True
            self._port.pause(self._port.assignment())
        elif self.paused and not hold and in_flight < self._limit // 2:
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
