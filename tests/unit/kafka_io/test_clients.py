"""KafkaClients without a broker: what its calls do around a stand-in confluent-kafka consumer."""

from __future__ import annotations

from worker.kafka_io.clients import KafkaClients
from worker.kafka_io.port import ClientEvents
from worker.settings import Settings
from worker.watchdog import Watchdog


class ClosingConsumer:
    """Like confluent-kafka's Consumer.close(): the revoke callback runs inside close()."""

    def __init__(self) -> None:
        self.stored: list[list[tuple[str, int, int]]] = []
        self.revoke = lambda: None

    def close(self) -> None:
        self.revoke()

    def store_offsets(self, offsets) -> None:
        self.stored.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


def test_offsets_stored_by_the_revoke_callback_inside_close_reach_the_consumer():
    # Seen in a container run: a drain that ran out of time ended in close(), whose revoke callback
    # stored offsets through a consumer already set to None: AttributeError, exit 1 instead of 3.
    clients: KafkaClients

    def on_revoked(partitions):
        clients.store_offsets({partition: 42 for partition in partitions})

    clients = KafkaClients(Settings(), ClientEvents(lambda p: None, on_revoked, lambda p: None), Watchdog())
    consumer = ClosingConsumer()
    consumer.revoke = lambda: clients._revoke_cb(consumer, [_tp("in", 0)])
    clients._consumer = consumer
    clients.close(5.0)
    assert consumer.stored == [[("in", 0, 42)]]
    clients.close(5.0)  # a second close does nothing
    assert consumer.stored == [[("in", 0, 42)]]


def _tp(topic: str, partition: int):
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)
