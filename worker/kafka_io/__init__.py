"""Kafka I/O: the port the worker talks to, its confluent-kafka adapter, and offset bookkeeping.

This package is the only place that imports ``confluent_kafka`` (in :mod:`.clients`,
:mod:`.errors` and :mod:`.replay_clients`, the reader and producer of ``worker replay``); the
rest of the worker sees :mod:`.port`'s plain types and
:class:`worker.policy.ClientError`.
"""

from worker.kafka_io.offsets import OffsetTracker, PartitionEpochs
from worker.kafka_io.port import (
    ClientEvents,
    DeliveryReport,
    KafkaCallError,
    KafkaPort,
    Partition,
    PartitionProgress,
)

__all__ = [
    "ClientEvents",
    "DeliveryReport",
    "KafkaCallError",
    "KafkaPort",
    "OffsetTracker",
    "Partition",
    "PartitionEpochs",
    "PartitionProgress",
]
