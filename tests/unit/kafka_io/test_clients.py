"""KafkaClients without a broker: what its calls do around a stand-in confluent-kafka consumer."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
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


# --- issue 17 part 3 / issue 18 finding 8: the group protocol and refused client properties ---


def _clients(**settings) -> KafkaClients:
    return KafkaClients(Settings(**settings), ClientEvents(lambda p: None, lambda p: None, lambda p: None), Watchdog())


def test_classic_protocol_assigns_cooperatively():
    assert _clients().consumer_config()["partition.assignment.strategy"] == "cooperative-sticky"


def test_consumer_protocol_leaves_out_what_it_refuses():
    config = _clients(kafka_consumer={"group.protocol": "consumer"}).consumer_config()
    assert config["group.protocol"] == "consumer"
    assert not {"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"} & set(config)
    # and librdkafka accepts the result (creating a consumer does not wait for the broker)
    from confluent_kafka import Consumer

    clients = _clients(kafka_consumer={"group.protocol": "consumer"})
    clients._create("consumer", Consumer, {**config, "bootstrap.servers": "127.0.0.1:9"}).close()


@pytest.mark.parametrize(
    ("role", "settings", "variable"),
    [
        ("consumer", {"kafka_consumer": {"bogus.property": "1"}}, "WORKER_KAFKA_CONSUMER_BOGUS_PROPERTY"),
        ("consumer", {"kafka": {"session.timeout.ms": "soon"}}, "WORKER_KAFKA_SESSION_TIMEOUT_MS"),
        ("producer", {"kafka_producer": {"enable.idempotence": "maybe"}}, "WORKER_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE"),
        ("admin", {"kafka": {"no.such.thing": "x"}}, "WORKER_KAFKA_NO_SUCH_THING"),
        ("producer", {"delivery": "exactly_once", "kafka_producer": {"enable.idempotence": "false"}},
         "WORKER_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE"),
    ],
)
def test_a_refused_client_property_is_a_config_error_naming_its_variable(role, settings, variable):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    clients = _clients(**settings)
    factory, config = {
        "consumer": (Consumer, clients.consumer_config),
        "producer": (Producer, clients.producer_config),
        "admin": (AdminClient, clients.admin_config),
    }[role]
    with pytest.raises(ConfigError) as raised:
        clients._create(role, factory, config())
    assert str(raised.value).startswith(f"{variable}: ")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("prop", "broker_side"),
    [("session.timeout.ms", "group.consumer.session.timeout.ms"),
     ("heartbeat.interval.ms", "group.consumer.heartbeat.interval.ms"),
     ("partition.assignment.strategy", "WORKER_KAFKA_CONSUMER_GROUP_REMOTE_ASSIGNOR")],
)
def test_consumer_protocol_refuses_classic_group_properties_with_what_to_use_instead(prop, broker_side):
    from confluent_kafka import Consumer

    clients = _clients(kafka_consumer={"group.protocol": "consumer", prop: "range" if "strategy" in prop else "10000"})
    with pytest.raises(ConfigError) as raised:
        clients._create("consumer", Consumer, clients.consumer_config())
    message = str(raised.value)
    assert message.startswith(f"WORKER_KAFKA_CONSUMER_{prop.upper().replace('.', '_')}: ") and broker_side in message


def test_a_producer_limit_that_is_not_a_number_is_a_config_error_before_any_connection():
    clients = _clients(kafka_producer={"message.max.bytes": "1MB"})
    with pytest.raises(ConfigError, match="^WORKER_KAFKA_PRODUCER_MESSAGE_MAX_BYTES: "):
        clients.start()


def test_consumer_protocol_assigns_incrementally(monkeypatch):
    """Under KIP-848 the assign callback gets only the added partitions: assign() would drop the others."""
    import worker.kafka_io.clients as clients_module

    calls = []

    class StandIn:
        def __init__(self, config):
            self.config = config

        def subscribe(self, topics, on_assign, on_revoke, on_lost):
            self.on_assign = on_assign

        def incremental_assign(self, partitions):
            calls.append(("incremental_assign", [p.partition for p in partitions]))

        def assign(self, partitions):
            calls.append(("assign", [p.partition for p in partitions]))

    monkeypatch.setattr(clients_module, "Producer", lambda config: object())
    monkeypatch.setattr(clients_module, "Consumer", StandIn)
    clients = _clients(kafka_consumer={"group.protocol": "consumer"})
    monkeypatch.setattr(clients, "_read_topic_limits", lambda topics: {})
    clients.start()
    clients._consumer.on_assign(clients._consumer, [_tp("in", 2)])
    assert calls == [("incremental_assign", [2])]
