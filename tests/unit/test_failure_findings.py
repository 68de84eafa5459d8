"""Issue 18's findings on the failure paths, each reproduced on the fake port (the loop's own behaviour)."""

from __future__ import annotations

import math
import threading
import time

import pytest

from tests.fakes.kafka_io import ABORTABLE, AUTH_FAILED, DENIED, RETRIABLE, TOO_LARGE, UNKNOWN_TOPIC
from tests.unit.test_loop import (
    T,
    FakeClassifier,
    assert_exactly_once,
    drive,
    finish,
    header,
    keys,
    make_worker,
    settled,
    start,
    texts,
    times_out_once,
)
from worker.kafka_io import PartitionProgress
from worker.errors import EXIT_FATAL, EXIT_UNFINISHED, FatalError
from worker.pipeline.infer import classify_isolating, not_a_probability



class NaNClassifier(FakeClassifier):
    """Returns NaN instead of raising: for every text once broken (after start), or for ``nan_for`` only."""

    def __init__(self, nan_for: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.nan_for = [ord(c) % 100 + 5 for c in nan_for] if nan_for else None

    def predict(self, batch):
        broken, self.broken = self.broken, False
        try:
            rows = super().predict(batch)
        finally:
            self.broken = broken
        return [[math.nan, math.inf] if broken or ids[1:-1] == self.nan_for else row for ids, row in zip(batch, rows)]


def test_finding_1_nan_for_every_text_is_a_broken_model_not_dead_letters():
    worker, fake = make_worker(NaNClassifier(broken_after_start=True))
    fake.feed(0, texts(20))
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "model_broken"
    assert "no probabilities" in worker.fatal.detail
    assert fake.visible("dlq") == [] and fake.visible("out") == []
    assert fake.committed == {}
    assert worker.health.ready()[0] is False


def test_finding_1_nan_for_one_text_dead_letters_that_text_only():
    classifier = NaNClassifier(nan_for="폭탄")
    worker, fake = make_worker(classifier)
    fake.feed(0, [t.encode() for t in ["가", "나", "폭탄", "다"]])
    finish(worker, fake)
    (dead,) = fake.visible("dlq")
    assert dead.key == b"0-2" and header(dead, "worker.error.kind") == b"inference_error"
    assert b"non-probabilities" in header(dead, "worker.error.reason")
    assert keys(fake.visible("out")) == [b"0-0", b"0-1", b"0-3"]
    assert fake.committed == {(T, 0): 4}


def test_rows_that_are_not_probabilities_are_classified_again_alone():
    calls = []

    class BatchFault(FakeClassifier):
        def predict(self, batch):
            calls.append(len(batch))
            rows = super().predict(batch)
            return [[math.nan, math.nan] for _ in rows] if len(batch) > 1 else rows  # only batches go wrong

    classifier = BatchFault()
    probabilities, failures, _ = classify_isolating(classifier, classifier.encode(["가나", "다", "라마바"]), 4096)
    assert failures == {} and all(not_a_probability(p, 2) is None for p in probabilities)
    assert calls[0] == 3 and calls[1:] == [1, 1, 1]


def test_not_a_probability():
    assert not_a_probability([0.2, 0.8], 2) is None
    assert not_a_probability([0.2, 0.9], 2) is None  # multi-label sigmoids need not sum to 1
    assert "non-probabilities" in not_a_probability([math.inf, 0.0], 2)
    assert "non-probabilities" in not_a_probability([1.5, -0.5], 2)
    assert "3 values for 2 classes" in not_a_probability([0.1, 0.2, 0.7], 2)


def test_finding_4_a_hung_model_call_is_model_stuck_not_a_healthy_worker():
    gate = threading.Event()  # never set: the model call hangs
    worker, fake = make_worker(FakeClassifier(gate=gate), model_stuck_after_s=0.3, model_stuck_factor=5)
    worker.classifier.gate = None  # start() encodes the canary only; the hang begins with the first window
    fake.feed(0, texts(3))
    worker.start()
    worker.classifier.gate = gate
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                worker.step()
            except FatalError as exc:
                worker.fatal = exc
                break
        assert worker.fatal is not None and worker.fatal.reason == "model_stuck", worker.fatal
        assert "on the model for" in worker.fatal.detail
        assert worker.shutdown() is False and worker.exit_code == EXIT_FATAL
        assert worker.health.ready()[0] is False
        assert fake.committed == {} and fake.visible("out") == []
    finally:
        gate.set()


def test_model_stuck_limit_scales_with_the_window_and_the_measured_speed():
    from worker.pipeline.infer import InferenceThread

    thread = InferenceThread(FakeClassifier(), 4096, FakeClassifier().encode(["x"])[0])
    assert thread.overdue(100.0, 1.0, 10) is None  # nothing on the model
    thread._running = (0.0, 1000)
    assert thread.overdue(0.5, 1.0, 10) is None
    assert "limit 1 s" in thread.overdue(2.0, 1.0, 10)  # nothing measured yet: the floor
    thread.seconds_per_token = 0.001  # 1000 tokens: 1 s expected, 10 s allowed
    assert thread.overdue(9.0, 1.0, 10) is None
    assert "limit 10 s" in thread.overdue(11.0, 1.0, 10)


def test_finding_3_exactly_once_escalation_survives_rewinds():
    """Result refused, then its dead letter refused too: a minimal dead letter, not abort-rewind forever."""
    worker, fake = make_worker(partitions=1, delivery="exactly_once")
    fake.feed(0, texts(4))

    def refuse(message):
        if message.key == b"0-2" and (message.topic == "out" or (message.topic == "dlq" and message.value is not None)):
            return TOO_LARGE
        return None

    fake.fail_delivery = refuse
    drive(worker, fake, seconds=20)
    assert worker.shutdown()
    assert_exactly_once(fake, [b"0-0", b"0-1", b"0-3"])
    (dead,) = fake.visible("dlq")
    assert dead.value is None and header(dead, "worker.error.kind") == b"produce_error"
    assert fake.committed == {(T, 0): 4}
    assert fake.calls.count("abort") == 2  # one per refusal, then done


def test_finding_3_exactly_once_record_no_destination_takes_stops_the_worker():
    worker, fake = make_worker(partitions=1, delivery="exactly_once")
    fake.feed(0, texts(3))
    fake.fail_delivery = lambda m: TOO_LARGE if b"0-1" == m.key or (m.topic == "dlq") else None
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "destination_unwritable"
    assert fake.committed.get((T, 0), 0) <= 1


def test_finding_2_nothing_older_than_the_replay_is_produced_after_a_purge():
    """A timeout reported while waiting for room in a full queue: purge, replay, and nothing stale after it."""
    worker, fake = make_worker(batch_max_messages=64)
    fake.queue_limit = 3
    fake.delivery_delay = 2
    fake.feed(0, texts(12))
    fake.fail_delivery = times_out_once(b"0-1")
    purge = fake.purge_queued

    def purge_and_mark():
        fake.written_at_purge = len([w for w in fake.written if w.topic == "out"])
        purge()

    fake.purge_queued = purge_and_mark
    finish(worker, fake)
    offsets = [int(k.split(b"-")[1]) for k in keys(fake.visible("out"))]
    first_after_purge = len([w for w in fake.written if w.topic == "out"][: fake.written_at_purge])
    after = offsets[first_after_purge:]
    assert after and after[0] <= 1, (offsets, first_after_purge)  # the replay starts at the timed-out record
    highest = -1
    for offset in offsets:  # per key (partition) order: never skips ahead
        assert offset <= highest + 1, offsets
        highest = max(highest, offset)
    assert set(offsets) == set(range(12))
    assert fake.committed == {(T, 0): 12}


def test_finding_5_a_transient_authentication_error_clears_when_a_broker_answers():
    worker, fake = make_worker(access_failure_timeout_s=0.3)
    start(worker)
    fake.events.on_error(AUTH_FAILED)  # idle: no record, acknowledgement or assignment will follow
    assert worker.health.ready()[0] is False
    fake.events.on_broker_answers()  # the statistics show an authenticated broker answering
    assert worker.health.ready()[0] is True
    time.sleep(0.4)
    worker.step()  # past the access timeout: nothing fatal
    assert worker.fatal is None and worker.health.ready()[0] is True


def test_an_authorization_refusal_is_not_cleared_by_a_broker_answering():
    worker, fake = make_worker(access_failure_timeout_s=0.3)
    start(worker)
    fake.events.on_error(DENIED)
    fake.events.on_broker_answers()  # connected, but the permission is still missing
    assert worker.health.ready()[0] is False
    time.sleep(0.4)
    with pytest.raises(FatalError) as caught:
        worker.step()
    assert caught.value.reason == "access_denied"


def test_brokers_answering_reads_the_statistics():
    import json

    from worker.kafka_io.clients import brokers_answering

    def stats(state, rx):
        return json.dumps({"brokers": {"b1:9092/1": {"state": state, "rx": rx}}})

    seen: dict[str, int] = {}
    assert not brokers_answering(stats("AUTH", 3), seen)  # first sight: nothing to compare with
    assert not brokers_answering(stats("AUTH", 4), seen)  # answers, but not authenticated
    assert brokers_answering(stats("UP", 6), seen) == {"b1:9092/1"}
    assert not brokers_answering(stats("UP", 6), seen)  # nothing new


def test_finding_12_a_group_coordinator_silent_past_the_limit_ends_the_worker():
    # After the coordinator's broker restarted, librdkafka kept the consumer's join request queued for a
    # connection that was gone: the loop polled on, owned nothing, and never rejoined (CI, broker restart).
    worker, fake = make_worker(group_silence_timeout_s=0.3)
    start(worker)
    fake.events.on_broker_answers()  # other brokers answering is no proof of membership
    worker.step()
    assert worker.health.ready()[0] is True
    time.sleep(0.4)
    with pytest.raises(FatalError) as caught:
        worker.step()
    assert caught.value.reason == "group_stuck" and "not answered" in caught.value.detail


def test_finding_12_a_coordinator_that_answers_keeps_the_worker():
    worker, fake = make_worker(group_silence_timeout_s=0.3)
    fake.feed(0, texts(3))
    start(worker)
    for _ in range(4):
        time.sleep(0.15)
        fake.events.on_group_answers()  # heartbeats, as the statistics show them
        worker.step()
    assert worker.fatal is None and worker.health.ready()[0] is True


def test_finding_12_a_stuck_group_exits_4_not_ready():
    worker, fake = make_worker(group_silence_timeout_s=0.2, fatal_linger_s=0)
    fake.feed(0, texts(2))
    start(worker)
    time.sleep(0.3)
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "group_stuck"
    assert worker.health.ready()[0] is False


def test_finding_12_without_statistics_nothing_is_watched():
    worker, fake = make_worker(group_silence_timeout_s=0.1, statistics_interval_ms=0)
    start(worker)
    time.sleep(0.2)
    worker.step()
    assert worker.fatal is None


def test_finding_12_the_default_limit_outlasts_a_rebalance():
    from worker.settings import Settings

    assert Settings().group_silence_limit_s == 360.0  # max.poll.interval.ms (300 s) + 60 s
    assert Settings(kafka_consumer={"max.poll.interval.ms": "20000"}).group_silence_limit_s == 80.0
    assert Settings(group_silence_timeout_s=5).group_silence_limit_s == 5.0


def test_finding_12_the_statistics_report_the_coordinator_answering():
    import json

    from worker.kafka_io.clients import KafkaClients
    from worker.kafka_io.port import ClientEvents
    from worker.settings import Settings
    from worker.watchdog import Watchdog

    heard = []
    events = ClientEvents(lambda p: None, lambda p: None, lambda p: None,
                          on_group_answers=lambda: heard.append("group"), on_broker_answers=lambda: heard.append("any"))
    clients = KafkaClients(Settings(), events, Watchdog())

    def stats(coordinator_rx, broker_rx):
        return json.dumps({"brokers": {"b1:9092/1": {"state": "UP", "rx": broker_rx},
                                       "GroupCoordinator": {"state": "UP", "rx": coordinator_rx}}})

    clients._stats_cb(stats(5, 10))
    clients._stats_cb(stats(5, 12))  # fetches answered, the coordinator silent
    assert heard == ["any"]
    clients._stats_cb(stats(6, 12))
    assert heard == ["any", "any", "group"]


def test_finding_7_an_abort_inside_the_shutdown_drain_is_not_a_clean_exit():
    worker, fake = make_worker(partitions=1, delivery="exactly_once", shutdown_timeout_s=2)
    fake.feed(0, texts(3))
    start(worker)
    worker.step()  # consumed and dispatched; the drain publishes the window
    fake.commit_errors.append(ABORTABLE)  # the drain's transaction is aborted: its records will be read again
    clean = worker.shutdown()
    assert fake.calls.count("abort") >= 1
    assert clean is False and worker.exit_code == EXIT_UNFINISHED
    assert fake.committed.get((T, 0), 0) < 3


def test_finding_11_commit_retries_follow_transaction_timeout_ms():
    clock = [0.0]
    worker, fake = make_worker(partitions=1, delivery="exactly_once",
                               kafka_producer={"transaction.timeout.ms": "5000"})
    assert worker.settings.transaction_timeout_s == 5.0
    assert worker.publisher._txn_timeout_s == 5.0
    worker.publisher._clock = lambda: clock[0]
    fake.commit_errors.extend([RETRIABLE] * 5)
    fake.feed(0, texts(2))
    start(worker)

    def advance():
        clock[0] += 2.0  # every turn is 2 s later: a retry comes past 5 s
        return settled(worker, fake)

    drive(worker, fake, until=advance)
    assert fake.calls.count("abort") == 1  # aborted at the limit, then rewound and committed
    assert_exactly_once(fake, [b"0-0", b"0-1"])


def test_finding_11_aborts_do_not_retry_without_limit():
    clock = [0.0]
    worker, fake = make_worker(partitions=1, delivery="exactly_once",
                               kafka_producer={"transaction.timeout.ms": "5000"})
    worker.publisher._clock = lambda: clock[0]
    fake.commit_errors.append(ABORTABLE)
    fake.abort_errors.extend([RETRIABLE] * 1000)
    fake.feed(0, texts(2))
    start(worker)
    with pytest.raises(FatalError) as caught:
        for _ in range(1000):
            clock[0] += 1.0
            worker.step()
    assert caught.value.reason == "kafka_fatal" and "abort_transaction kept failing" in caught.value.detail
    assert fake.calls.count("abort") < 20


def test_finding_11_worker_ready_is_0_whenever_readyz_is_503():
    worker, fake = make_worker()
    start(worker)
    assert worker.health.ready()[0] is True and worker.metrics.ready._value.get() == 1
    fake.events.on_error(DENIED)
    assert worker.health.ready()[0] is False and worker.metrics.ready._value.get() == 0
    fake.feed(0, texts(1))
    drive(worker, fake)  # records flow again: access proven
    assert worker.health.ready()[0] is True and worker.metrics.ready._value.get() == 1


def test_finding_11_at_least_once_commit_failures_are_counted_and_the_lag_counts_from_the_commit():
    worker, fake = make_worker()
    fake.feed(0, texts(5))
    drive(worker, fake)
    fake.events.on_commit(RETRIABLE)
    fake.events.on_commit(None)
    assert worker.metrics.commits.labels(outcome="failed")._value.get() == 1
    assert worker.metrics.commits.labels(outcome="committed")._value.get() == 1
    # All 5 done, but the group's committed offset is still 2: the lag the group (and KEDA) sees is 8.
    fake.events.on_progress({(T, 0): PartitionProgress(high_watermark=10, last_stable=10, committed=2, position=5)})
    assert worker.metrics.lag.labels(T, "0")._value.get() == 8


def test_finding_11_after_a_fatal_error_every_acknowledged_record_is_committed():
    """The reports after the one that stops the worker still count (before: dropped with it)."""
    worker, fake = make_worker(partitions=2, batch_max_messages=64)
    fake.feed(0, texts(3, "a"))
    fake.feed(1, texts(3, "b"))
    fake.fail_delivery = lambda m: UNKNOWN_TOPIC if m.topic == "out" and m.key == b"0-0" else None
    assert worker.run() is False
    assert worker.fatal.reason == "destination_unwritable"
    acknowledged = {w.key for w in fake.written if w.topic == "out"}
    assert {b"1-0", b"1-1", b"1-2"} <= acknowledged
    assert fake.committed.get((T, 1)) == 3  # partition 1's results were all acknowledged
    assert fake.committed.get((T, 0), 0) == 0


def test_finding_10_backpressure_bounds_the_bytes_in_flight_too():
    gate = threading.Event()  # the model holds the window: nothing finishes while the test looks
    worker, fake = make_worker(FakeClassifier(gate=gate), max_in_flight_messages=1000, max_in_flight_bytes=50_000,
                               batch_max_messages=1000, batch_max_tokens=10**6)
    fake.feed(0, ["가".encode() * 10_000] * 8)  # 30 kB each: two are past the byte limit, far below the count
    start(worker)
    worker.step()
    assert worker.tracker.bytes >= 50_000 and len(worker.tracker) < 1000
    assert fake.paused == {(T, 0)}
    gate.set()
    drive(worker, fake)
    assert worker.tracker.bytes == 0 and not worker.backpressure.paused


def test_tracker_counts_bytes_until_done_or_forgotten():
    from worker.kafka_io import OffsetTracker

    t, p, q = OffsetTracker(), (T, 0), (T, 1)
    t.add(p, 0, 100)
    t.add(p, 1, 50)
    t.add(q, 0, 7)
    t.mark_done(p, 1)
    assert t.bytes == 157  # offset 1 waits behind offset 0
    t.mark_done(p, 0)
    assert t.bytes == 7
    t.forget([q])
    assert t.bytes == 0


def test_finding_6_retries_inside_the_shutdown_drain_keep_to_its_deadline():
    worker, fake = make_worker(partitions=1, delivery="exactly_once", shutdown_timeout_s=1.0)
    fake.feed(0, texts(2))
    start(worker)
    worker.step()
    fake.send_offsets_errors.extend([RETRIABLE] * 6)  # backoffs of 0.1+0.2+0.5+1+2 s: past the deadline
    began = time.monotonic()
    worker.request_stop()
    clean = worker.shutdown()
    assert time.monotonic() - began < 1.5
    assert clean is False and worker.exit_code == EXIT_UNFINISHED
    assert fake.committed.get((T, 0), 0) == 0


def test_finding_6_a_stop_during_a_revocation_drain_ends_it_by_the_shutdown_deadline():
    gate = threading.Event()
    worker, fake = make_worker(FakeClassifier(gate=gate), partitions=1, shutdown_timeout_s=1.0)
    fake.feed(0, texts(3))
    start(worker)
    worker.step()  # the model holds the window
    worker.request_stop()  # SIGTERM arrives...
    began = time.monotonic()
    time.sleep(0.3)
    fake.revoke([(T, 0)])  # ...and a revocation drain starts 0.3 s later: it ends by the stop's deadline
    try:
        assert time.monotonic() - began < 1.0
    finally:
        gate.set()


# --- the chaos run's exactly-once finding: a rewind Kafka refuses ---
def test_refused_seek_after_an_abort_reads_nothing_past_it_until_a_seek_succeeds():
    """librdkafka refuses a seek while a partition is not fetching (`_STATE`: its leader's broker just died) and
    the fetch goes on where it was. Before, the worker took the records after the aborted ones as the next ones
    and committed their offsets in the next transaction: the aborted records' results were never written."""
    worker, fake = make_worker(partitions=1, delivery="exactly_once")
    fake.refuse_seeks[(T, 0)] = 3  # the rewind after the abort and two retries are refused
    fake.feed(0, texts(6))
    fake.commit_errors.append(ABORTABLE)
    start(worker)
    drive(worker, fake, until=lambda: "abort" in fake.calls)
    fake.feed(0, texts(4, prefix="뒤"))  # more records arrive while the partition cannot be rewound
    drive(worker, fake, until=lambda: not worker._unsought and settled(worker, fake))
    assert worker.shutdown()
    assert sum(c.startswith("seek") for c in fake.calls) >= 4
    assert_exactly_once(fake, [f"0-{i}".encode() for i in range(10)])
    assert fake.committed == {(T, 0): 10}
    assert worker.metrics.errors.labels(kind="seek_refused")._value.get() == 3


def test_refused_seek_after_a_replay_keeps_per_key_order_at_least_once():
    """At-least-once: the replay after a timed-out delivery is refused once; nothing after it is produced
    before the records it rewinds to, and every record gets its result."""
    worker, fake = make_worker(partitions=1)
    fake.refuse_seeks[(T, 0)] = 1
    fake.feed(0, texts(6))
    fake.fail_delivery = times_out_once(b"0-2")
    fake.delivery_delay = 1
    start(worker)
    drive(worker, fake, until=lambda: "purge" in fake.calls)
    fake.feed(0, texts(3, prefix="뒤"))
    drive(worker, fake, until=lambda: not worker._unsought and settled(worker, fake))
    assert worker.shutdown()
    offsets = [int(k.split(b"-")[1]) for k in keys(fake.visible("out"))]
    highest = -1
    for offset in offsets:  # a replay may repeat records but never skips ahead
        assert offset <= highest + 1, offsets
        highest = max(highest, offset)
    assert set(offsets) == set(range(9))
    assert fake.committed == {(T, 0): 9}


def test_a_drain_with_a_partition_not_yet_rewound_is_not_clean():
    worker, fake = make_worker(partitions=1, delivery="exactly_once")
    fake.refuse_seeks[(T, 0)] = 1_000_000  # never rewound before the stop
    fake.feed(0, texts(4))
    fake.commit_errors.append(ABORTABLE)
    start(worker)
    drive(worker, fake, until=lambda: "abort" in fake.calls)
    assert not worker.shutdown()
    assert worker.exit_code == EXIT_UNFINISHED
    assert fake.committed.get((T, 0), 0) == 0


def test_an_unexpected_exception_in_the_loop_stops_as_a_fatal_error():
    # Seen in a chaos run: an exception out of a statistics callback ended a worker with a traceback and then a
    # native abort (exit -6, "terminate called without an active exception") instead of the documented exit.
    worker, fake = make_worker(partitions=1, fatal_linger_s=0)
    fake.feed(0, texts(4))
    real_poll, polls = fake.poll, []

    def poll(max_messages, timeout_s):
        polls.append(1)
        if fake.committed.get((T, 0)) == 4 or len(polls) > 5000:
            fake.feed(0, texts(2, prefix="뒤"))
            real_poll(max_messages, timeout_s)  # consumed, never finished: read again by the next owner
            raise AttributeError("a bug in a callback")
        return real_poll(max_messages, timeout_s)

    fake.poll = poll
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "internal_error"
    assert "AttributeError: a bug in a callback" in worker.fatal.detail
    assert worker.health.ready()[0] is False
    assert fake.committed == {(T, 0): 4}  # what was delivered, nothing past it
