"""The publishers' contract: they return what they finished and ask for replays; the loop does the rest."""

from __future__ import annotations

from tests.fakes.kafka_io import ABORTABLE, TIMED_OUT, TOO_LARGE, FakeKafka
from worker.pipeline.publish import make_publisher
from worker.pipeline.render import RESULT, Delivery, Message, Renderer
from worker.settings import Settings
from worker.wire.types import InputRecord


def publisher_for(delivery: str, current=lambda d: True):
    fake = FakeKafka(Settings(input_topic="in", delivery=delivery), None, None, partitions=1)
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "r"})
    return make_publisher(fake, renderer, current, lambda: None, clock=lambda: 0.0, wall_clock=lambda: 0.0), fake


def deliveries(n: int) -> list[Delivery]:
    records = [InputRecord("in", 0, i, f"0-{i}".encode(), b"x", [], None) for i in range(n)]
    return [Delivery(r, 1, [Message("out", r.key, b"{}", [], RESULT, label="positive")]) for r in records]


def test_at_least_once_returns_deliveries_once_acknowledged():
    publisher, fake = publisher_for("at_least_once")
    sent = deliveries(3)
    assert publisher.publish(sent).done == []  # produced, not yet acknowledged
    assert publisher.step().done == sent
    assert publisher.step().done == []


def test_at_least_once_asks_for_a_replay_when_a_delivery_times_out():
    publisher, fake = publisher_for("at_least_once")
    fake.fail_delivery = lambda m: TIMED_OUT if m.key == b"0-1" else None
    publisher.publish(deliveries(3))
    published = publisher.step()
    assert [d.source.offset for d in published.done] == [0]
    assert published.replay is not None and "_MSG_TIMED_OUT" in published.replay
    assert "purge" in fake.calls


def test_reports_of_deliveries_no_longer_current_are_ignored():
    publisher, fake = publisher_for("at_least_once", current=lambda d: d.source.offset != 1)
    fake.fail_delivery = lambda m: TOO_LARGE if m.key == b"0-1" else None
    publisher.publish(deliveries(3))
    published = publisher.step()
    assert [d.source.offset for d in published.done] == [0, 2] and published.replay is None
    assert fake.visible("dlq") == []  # its partition was rewound or revoked: no dead letter for it


def test_transactional_returns_deliveries_once_committed_and_asks_for_a_replay_after_an_abort():
    publisher, fake = publisher_for("exactly_once")
    sent = deliveries(2)
    assert publisher.publish(sent).done == sent
    assert fake.committed == {("in", 0): 2}
    fake.commit_errors.append(ABORTABLE)
    published = publisher.publish(deliveries(3)[2:])
    assert published.done == [] and published.replay is not None and "aborted" in published.replay
    assert publisher.idle
