"""The loop and its failure paths against an in-memory Kafka (tests/fakes/kafka_io.py), no broker.

Each test of a defect from issue 10 drives the real Worker step by step (the inference stage runs
on its thread as in production) and checks what a read_committed consumer would see, what was
committed, and what the worker reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque

import pytest

from tests.fakes.kafka_io import (
    ABORTABLE,
    AUTH_FAILED,
    FENCED,
    RETRIABLE,
    TIMED_OUT,
    TOO_LARGE,
    UNKNOWN_TOPIC,
    FakeKafka,
)
from worker.app import EXIT_FATAL, EXIT_UNFINISHED, Worker
from worker.engines.base import Encoding
from worker.health import Health
from worker.kafka_io import OffsetTracker, PartitionEpochs, PartitionProgress
from worker.metrics import WorkerMetrics
from worker.pipeline.infer import classify_isolating
from worker.settings import Settings
from worker.watchdog import Watchdog

T = "in"


class FakeClassifier:
    labels = ["negative", "positive"]
    info = {"model": "fake", "revision": "0", "device": "cpu", "dtype": "float32"}

    def __init__(self, poison: str | None = None, broken_after_start: bool = False, gate: threading.Event | None = None):
        self.poison = poison
        self.broken = False
        self.broken_after_start = broken_after_start
        self.gate = gate
        self.calls = 0

    def encode(self, texts):
        if self.broken_after_start:
            self.broken = True  # the canary is encoded at start; the model breaks right after
        return [Encoding([2] + [ord(c) % 100 + 5 for c in t] + [3], False) for t in texts]

    def predict(self, batch):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.broken:
            raise RuntimeError("CUDA error: device lost")
        if self.poison is not None and any(ids[1:-1] == [ord(c) % 100 + 5 for c in self.poison] for ids in batch):
            raise RuntimeError("model exploded")
        return [[0.25, 0.75] if len(ids) % 2 else [0.9, 0.1] for ids in batch]


def never_overruns(overrun):
    raise AssertionError(f"watchdog fired: {overrun}")


def make_worker(classifier=None, partitions=1, *, schemas=None, shadow=None, **overrides):
    """A Worker on the fake Kafka port; ``overrides`` are settings, ``schemas``/``shadow`` the Worker's ports."""
    values = dict(input_topic=T, output_topic="out", dlq_topic="dlq", metrics_port=0, batch_max_wait_ms=0,
                  shutdown_timeout_s=5)
    values.update(overrides)
    settings = Settings(**values)
    made = {}

    def factory(settings, events, watchdog):
        made["fake"] = FakeKafka(settings, events, watchdog, partitions=partitions)
        return made["fake"]

    metrics = WorkerMetrics()
    worker = Worker(settings, classifier or FakeClassifier(), metrics, Health(metrics), clients_factory=factory,
                    watchdog=Watchdog(on_overrun=never_overruns), schemas=schemas, shadow=shadow)
    return worker, made["fake"]


def texts(n, prefix="글"):
    return [f"{prefix}{i}".encode() for i in range(n)]


def start(worker):
    worker.start()


def settled(worker, fake):
    consumed = all(fake.position[p] >= len(fake.input.get(p[1], [])) for p in fake.assigned)
    return (consumed and not worker.inference.busy and len(worker.tracker) == 0 and worker.publisher.idle
            and len(worker.batcher) == 0)


def drive(worker, fake, seconds=10.0, until=None):
    if not worker.started:
        start(worker)
    condition = until or (lambda: settled(worker, fake))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        worker.step()
        if condition():
            return
        time.sleep(0.001)  # the fake never blocks in poll(); real time lets retries come due
    raise AssertionError("the worker did not settle")


def finish(worker, fake):
    drive(worker, fake)
    assert worker.shutdown(), "shutdown left records unfinished"


def keys(written):
    return [w.key for w in written]


def header(written, name):
    return dict(written.headers).get(name)


# --- offsets and epochs ---
def test_tracker_commits_only_contiguous_done_offsets():
    t, p = OffsetTracker(), (T, 0)
    for offset in (5, 6, 7, 8):
        t.add(p, offset)
    t.mark_done(p, 6)
    t.mark_done(p, 8)
    assert t.committable() == {} and t.first_unfinished(p) == 5
    t.mark_done(p, 5)
    assert t.committable() == {p: 7} and t.first_unfinished(p) == 7
    assert t.committable() == {}  # reported once
    t.mark_done(p, 7)
    assert t.committable() == {p: 9} and t.unfinished() == {} and len(t) == 0


def test_epochs_make_work_of_revoked_or_rewound_partitions_stale():
    e, p = PartitionEpochs(), (T, 0)
    first = e.assign(p)
    assert e.is_current(p, first)
    e.renew([p])
    assert not e.is_current(p, first)
    second = e.of(p)
    e.release([p])
    assert not e.is_current(p, second) and e.of(p) is None


# --- the happy path and bad records ---
def test_every_record_gets_exactly_one_output_and_offsets_advance():
    worker, fake = make_worker(partitions=2)
    fake.feed(0, ["좋다".encode(), b"\xff", None, "별로".encode()])
    fake.feed(1, [b"  ", "최고".encode()])
    finish(worker, fake)
    assert keys(fake.visible("out")) == [b"0-0", b"0-3", b"1-1"]
    assert sorted(keys(fake.visible("dlq"))) == [b"0-1", b"0-2", b"1-0"]
    assert fake.committed == {(T, 0): 4, (T, 1): 2}
    m = worker.metrics
    assert m.dead_letters.labels(reason="invalid_utf8")._value.get() == 1
    assert m.dead_letters.labels(reason="tombstone")._value.get() == 1
    assert m.dead_letters.labels(reason="empty_text")._value.get() == 1
    assert m.produced.labels(topic="out")._value.get() == 3


def test_result_value_matches_schema():
    worker, fake = make_worker()
    fake.feed(0, ["좋다".encode()])
    finish(worker, fake)
    value = json.loads(fake.visible("out")[0].value)
    assert set(value) >= {"input", "label", "score", "probabilities", "model", "source", "latency_ms"}
    assert value["model"] == {"id": "fake", "revision": "0"}


def test_failing_text_is_isolated_and_dead_lettered():
    worker, fake = make_worker(FakeClassifier(poison="폭탄"))
    fake.feed(0, [t.encode() for t in ["가", "나", "폭탄", "다", "라"]])
    finish(worker, fake)
    (dead,) = fake.visible("dlq")
    assert dead.key == b"0-2" and header(dead, "worker.error.kind") == b"inference_error"
    assert b"model exploded" in header(dead, "worker.error.reason")
    assert keys(fake.visible("out")) == [b"0-0", b"0-1", b"0-3", b"0-4"]
    assert fake.committed == {(T, 0): 5}


def test_classify_isolating_bisects():
    classifier = FakeClassifier(poison="x")
    encodings = classifier.encode(["a", "b", "x", "c"])
    probs, failures, _ = classify_isolating(classifier, encodings, 1)
    assert list(failures) == [2] and probs[2] is None
    assert all(p is not None for i, p in enumerate(probs) if i != 2)


def test_tokenizer_failure_affects_only_its_record():
    class Picky(FakeClassifier):
        def encode(self, texts):
            if any("💣" in t for t in texts):
                raise TypeError("tokenizer cannot take this")
            return super().encode(texts)

    worker, fake = make_worker(Picky())
    fake.feed(0, ["하나".encode(), "💣".encode(), "셋".encode()])
    finish(worker, fake)
    assert keys(fake.visible("out")) == [b"0-0", b"0-2"]
    (dead,) = fake.visible("dlq")
    assert header(dead, "worker.error.kind") == b"tokenize_error" and b"TypeError" in header(dead, "worker.error.reason")


def test_model_broken_for_every_text_stops_the_worker_without_dead_letters():
    worker, fake = make_worker(FakeClassifier(broken_after_start=True))
    fake.feed(0, texts(20))
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "model_broken"
    assert "device lost" in worker.fatal.detail
    assert fake.visible("dlq") == [] and fake.visible("out") == []
    assert fake.committed == {}
    assert worker.metrics.blocked.labels(reason="model_broken")._value.get() == 1
    assert worker.health.ready()[0] is False


# --- back-pressure and assignment ---
def test_backpressure_pauses_and_resumes_and_pauses_new_partitions():
    gate = threading.Event()  # the model holds the window: nothing is finished while the test looks
    worker, fake = make_worker(FakeClassifier(gate=gate), max_in_flight_messages=10)
    fake.feed(0, texts(12))
    start(worker)
    worker.step()
    worker.backpressure.update(len(worker.tracker))
    assert fake.paused == {(T, 0)}
    fake.events.on_assigned([(T, 7)])
    fake.assigned.append((T, 7))
    worker.backpressure.on_assigned([(T, 7)])
    assert (T, 7) in fake.paused
    worker.tracker.forget([(T, 0)])
    worker.backpressure.update(len(worker.tracker))
    assert not worker.backpressure.paused
    gate.set()


def test_due_window_keeps_filling_while_the_model_is_busy():
    """Under load, windows grow with the traffic instead of queueing many small ones."""
    gate = threading.Event()
    worker, fake = make_worker(FakeClassifier(gate=gate), batch_max_messages=1000)
    start(worker)
    for chunk in range(4):
        fake.feed(0, texts(5, prefix=f"글{chunk}-"))
        worker.step()
    assert worker.inference.in_flight == 1  # the model is busy with the first window
    assert len(worker.batcher) == 15  # the rest waits in one growing window
    gate.set()
    finish(worker, fake)
    assert worker.metrics.batch_messages._sum.get() == 20
    assert fake.committed == {(T, 0): 20}


# --- issue 10, defects 1-3: exactly-once aborts and commit retries ---
def eos_worker(partitions=2, **overrides):
    return make_worker(partitions=partitions, delivery="exactly_once", **overrides)


def assert_exactly_once(fake, expected_keys, topic="out"):
    seen = Counter(keys(fake.visible(topic)))
    assert set(seen) == set(expected_keys), set(expected_keys) ^ set(seen)
    assert all(n == 1 for n in seen.values()), {k: n for k, n in seen.items() if n > 1}


def test_abort_does_not_resend_purged_records_and_loses_nothing():
    """Defects 1 and 2: purged reports arrive after the abort; partitions have no committed offset yet."""
    worker, fake = eos_worker()
    fake.feed(0, texts(6))
    fake.feed(1, texts(4))
    fake.commit_errors.append(ABORTABLE)
    finish(worker, fake)
    assert "abort" in fake.calls
    seeks = [c for c in fake.calls if c.startswith("seek")]
    assert seeks and "('in', 0): 0" in seeks[0] and "('in', 1): 0" in seeks[0]  # both rewound to their start
    assert_exactly_once(fake, [f"{p}-{i}".encode() for p, n in ((0, 6), (1, 4)) for i in range(n)])
    assert fake.committed == {(T, 0): 6, (T, 1): 4}
    assert fake.stored == {}  # no offset outside a transaction


def test_abort_with_purged_reports_in_flight():
    """Messages still queued at the abort come back PURGED on a later serve(): never re-sent."""
    worker, fake = eos_worker(partitions=1)
    fake.delivery_delay = 1_000_000  # nothing is delivered before commit flushes
    fake.feed(0, texts(5))
    fake.commit_errors.extend([ABORTABLE])
    finish(worker, fake)
    assert_exactly_once(fake, [f"0-{i}".encode() for i in range(5)])
    assert fake.committed == {(T, 0): 5}


def test_retriable_commit_is_retried_without_sending_the_offsets_again():
    """Defect 3: after a retriable failure only commit_transaction() is called again."""
    worker, fake = eos_worker(partitions=1)
    fake.feed(0, texts(3))
    fake.commit_errors.extend([RETRIABLE, RETRIABLE])
    finish(worker, fake)
    assert [c.split()[0] for c in fake.calls if c != "close"] == ["begin", "send_offsets", "commit", "commit", "commit"]
    assert_exactly_once(fake, [f"0-{i}".encode() for i in range(3)])


def test_retriable_send_offsets_is_retried_with_the_same_offsets():
    worker, fake = eos_worker(partitions=1)
    fake.feed(0, texts(3))
    fake.send_offsets_errors.append(RETRIABLE)
    finish(worker, fake)
    sends = [c for c in fake.calls if c.startswith("send_offsets")]
    assert len(sends) == 2 and sends[0] == sends[1]
    assert_exactly_once(fake, [f"0-{i}".encode() for i in range(3)])


def test_fenced_producer_ends_the_worker_without_committing_more():
    worker, fake = eos_worker(partitions=1)
    fake.feed(0, texts(3))
    fake.commit_errors.append(FENCED)
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "fenced"
    assert fake.committed == {} and fake.visible("out") == []
    assert worker.health.ready()[0] is False


def test_record_refused_inside_a_transaction_is_dead_lettered_after_the_rewind():
    worker, fake = eos_worker(partitions=1)
    fake.feed(0, texts(4))
    fake.fail_delivery = lambda m: TOO_LARGE if m.topic == "out" and m.key == b"0-2" else None
    finish(worker, fake)
    assert_exactly_once(fake, [b"0-0", b"0-1", b"0-3"])
    (dead,) = fake.visible("dlq")
    assert dead.key == b"0-2" and header(dead, "worker.error.kind") == b"produce_error"
    assert fake.committed == {(T, 0): 4}


# --- defect 4: nothing consumed before a revocation is published or committed after it ---
@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_windows_of_revoked_partitions_are_dropped(delivery):
    gate = threading.Event()
    worker, fake = make_worker(FakeClassifier(gate=gate), partitions=2, delivery=delivery, shutdown_timeout_s=0.3)
    fake.feed(0, texts(3, "a"))
    fake.feed(1, texts(3, "b"))
    start(worker)
    worker.step()  # consumed and dispatched; the model is stuck on the window
    assert worker.inference.in_flight == 1
    fake.revoke([(T, 1)])  # drain gives up after its deadline
    gate.set()
    finish(worker, fake)
    published = keys(fake.visible("out"))
    assert all(not k.startswith(b"1-") for k in published), published
    assert (T, 1) not in fake.committed or fake.committed[(T, 1)] == 0
    assert all(p != (T, 1) for c in fake.calls if c.startswith("send_offsets") for p in eval(c[13:]))


# --- defect 5: delivery errors ---
def test_record_refused_for_good_goes_to_the_dead_letter_topic():
    worker, fake = make_worker()
    fake.feed(0, texts(4))
    fake.fail_delivery = lambda m: TOO_LARGE if m.topic == "out" and m.key == b"0-1" else None
    finish(worker, fake)
    assert keys(fake.visible("out")) == [b"0-0", b"0-2", b"0-3"]
    (dead,) = fake.visible("dlq")
    assert dead.key == b"0-1" and header(dead, "worker.error.kind") == b"produce_error"
    assert b"out refused the record" in header(dead, "worker.error.reason")
    assert fake.committed == {(T, 0): 4}


def test_dead_letter_refused_for_good_becomes_a_minimal_dead_letter():
    worker, fake = make_worker()
    fake.feed(0, [b"\xff" * 10])
    fake.fail_delivery = lambda m: TOO_LARGE if m.topic == "dlq" and m.value is not None else None
    finish(worker, fake)
    (dead,) = fake.visible("dlq")
    assert dead.value is None and dead.key is None and header(dead, "worker.error.kind") == b"invalid_utf8"


def test_unwritable_destination_ends_the_worker_committing_only_what_was_delivered():
    worker, fake = make_worker()
    fake.feed(0, [b"\xff", "좋다".encode(), "별로".encode()])
    fake.fail_delivery = lambda m: UNKNOWN_TOPIC if m.topic == "out" else None
    assert worker.run() is False
    assert worker.exit_code == EXIT_FATAL and worker.fatal.reason == "destination_unwritable"
    assert "out" in worker.fatal.detail
    assert fake.committed.get((T, 0), 0) <= 1  # only the dead letter before the first result
    assert worker.health.ready()[0] is False


def times_out_once(key):
    """A ``fail_delivery`` script: the first delivery of ``key`` times out, everything else is delivered."""
    failed = []

    def fail_once(message):
        if message.key == key and not failed:
            failed.append(message.key)
            return TIMED_OUT
        return None

    return fail_once


def test_timed_out_delivery_replays_in_order():
    worker, fake = make_worker()
    fake.feed(0, texts(6))
    fake.fail_delivery = times_out_once(b"0-2")
    fake.delivery_delay = 1  # later messages are still queued when the timeout is reported
    finish(worker, fake)
    out = keys(fake.visible("out"))
    offsets = [int(k.split(b"-")[1]) for k in out]
    highest = -1
    for offset in offsets:  # a replay may repeat records but never skips ahead
        assert offset <= highest + 1, offsets
        highest = max(highest, offset)
    assert set(offsets) == set(range(6))
    assert "purge" in fake.calls
    assert fake.committed == {(T, 0): 6}


# --- access, shutdown, lag, health ---
def test_refused_credentials_make_the_worker_not_ready_at_once_then_end_it():
    worker, fake = make_worker(access_failure_timeout_s=0.2)
    start(worker)
    fake.events.on_error(AUTH_FAILED)
    assert worker.health.ready()[0] is False
    assert "access_denied" in worker.health.ready()[1]["reason"]
    assert worker.metrics.blocked.labels(reason="access_denied")._value.get() == 1
    time.sleep(0.25)
    with pytest.raises(Exception) as caught:
        worker.step()
    assert getattr(caught.value, "reason", None) == "access_denied"


def test_access_recovers_when_the_cluster_accepts_again():
    worker, fake = make_worker(access_failure_timeout_s=60)
    start(worker)
    fake.events.on_error(AUTH_FAILED)
    fake.feed(0, texts(1))
    drive(worker, fake)
    assert worker.health.ready()[0] is True


def test_shutdown_keeps_to_its_deadline_when_nothing_is_acknowledged():
    worker, fake = make_worker(shutdown_timeout_s=1.0)
    fake.delivery_delay = 1_000_000
    fake.feed(0, texts(5))
    start(worker)
    for _ in range(50):
        worker.step()
    started = time.monotonic()
    assert worker.shutdown() is False
    assert time.monotonic() - started < 1.5
    assert worker.exit_code == EXIT_UNFINISHED
    assert fake.committed.get((T, 0), 0) == 0  # nothing was acknowledged, nothing committed


def test_drain_keeps_the_heartbeat():
    gate = threading.Event()
    worker, fake = make_worker(FakeClassifier(gate=gate), shutdown_timeout_s=0.5)
    fake.feed(0, texts(2))
    start(worker)
    worker.step()
    beats = []
    worker.health.beat = lambda: beats.append(1)  # type: ignore[method-assign]
    worker.drain(time.monotonic() + 0.2)
    gate.set()
    assert len(beats) > 3


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_lag_counts_from_the_end_of_the_log_to_the_first_unfinished_record(delivery):
    worker, fake = make_worker(delivery=delivery)
    fake.feed(0, texts(5))
    finish_steps = worker  # noqa: F841
    drive(worker, fake)
    progress = {(T, 0): PartitionProgress(high_watermark=12, last_stable=10, committed=-1001, position=5)}
    fake.events.on_progress(progress)
    assert worker.metrics.lag.labels(T, "0")._value.get() == 5  # last stable 10 - done up to 5
    start_unfinished = OffsetTracker()
    start_unfinished.add((T, 0), 7)
    worker.tracker = start_unfinished
    fake.events.on_progress(progress)
    assert worker.metrics.lag.labels(T, "0")._value.get() == 3


def test_readiness_is_never_green_while_health_is_red():
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    health = Health(stale_after_s=10, clock=clock)
    health.set_phase("serving")
    assert health.ready()[0] and health.live()[0]
    clock.now = 11
    assert not health.live()[0] and not health.ready()[0]
    health.beat()
    health.block("destination_unwritable", "out: unknown topic")
    ok, detail = health.ready()
    assert health.live()[0] and not ok and "destination_unwritable" in detail["reason"]


# --- moderation routes ---
@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_routes_copy_results_to_every_matching_rule(delivery):
    routes = ([
        {"name": "flagged", "topic": "flagged", "labels": ["negative"], "min_score": 0.85},
        {"name": "confident", "topic": "confident", "min_score": 0.7},
        {"name": "review", "topic": "review", "below": 0.8},
    ])
    worker, fake = make_worker(delivery=delivery, routes=list(routes))
    fake.feed(0, ["가".encode(), "가나".encode(), b"\xff"])  # odd length -> positive 0.75, even -> negative 0.9
    finish(worker, fake)
    assert keys(fake.visible("out")) == [b"0-0", b"0-1"]
    assert keys(fake.visible("flagged")) == [b"0-1"]
    assert keys(fake.visible("confident")) == [b"0-0", b"0-1"]
    assert keys(fake.visible("review")) == [b"0-0"]
    main = {w.key: w for w in fake.visible("out")}
    for topic in ("flagged", "confident", "review"):
        for w in fake.visible(topic):
            assert w.value == main[w.key].value
            assert header(w, "worker.route") == topic.encode()
            assert header(w, "h") == b"v"
    assert worker.metrics.routed.labels(route="confident")._value.get() == 2
    assert fake.committed == {(T, 0): 3}


def test_route_naming_an_unknown_label_fails_at_start():
    from worker.errors import ConfigError  # the cli prints it as one line and exits 2

    with pytest.raises(ConfigError, match=r"^WORKER_ROUTES: route 'x' names label\(s\) toxic"):
        make_worker(routes=[{"name": "x", "topic": "x", "labels": ["toxic"]}])


def test_fake_kafka_scripts_are_consumed():
    # The fake itself: scripted errors are used once each, in order.
    fake = FakeKafka(Settings(delivery="exactly_once"), None, None)
    fake.commit_errors = deque([RETRIABLE])
    fake.begin_transaction()
    with pytest.raises(Exception):
        fake.commit_transaction(1)
    fake.commit_transaction(1)
    assert fake.txn_state == {1: "committed"}


def test_the_fake_and_the_real_clients_implement_the_same_port():
    """The fake cannot drift from KafkaClients: both have every KafkaPort method, with the same parameters."""
    import inspect

    from worker.kafka_io import KafkaPort
    from worker.kafka_io.clients import KafkaClients

    members = [name for name in dir(KafkaPort) if not name.startswith("_") and callable(getattr(KafkaPort, name))]
    assert len(members) >= 15
    for name in members:
        expected = list(inspect.signature(getattr(KafkaPort, name)).parameters)
        for implementation in (KafkaClients, FakeKafka):
            method = getattr(implementation, name, None)
            assert callable(method), f"{implementation.__name__} has no {name}"
            assert list(inspect.signature(method).parameters) == expected, f"{implementation.__name__}.{name}"
    for attribute in ("transactional", "read_committed"):
        assert attribute in KafkaPort.__annotations__
