"""Issue 18's findings on the failure paths, each reproduced on the fake port (the loop's own behaviour)."""

from __future__ import annotations

import math
import threading
import time

import pytest

from tests.fakes.kafka_io import AUTH_FAILED, DENIED, TIMED_OUT, TOO_LARGE
from tests.unit.test_loop import (
    T,
    FakeClassifier,
    assert_exactly_once,
    drive,
    finish,
    header,
    keys,
    make_worker,
    start,
    texts,
)
from worker.errors import EXIT_FATAL, FatalError
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
    failed = []

    def fail_once(message):
        if message.key == b"0-1" and not failed:
            failed.append(message.key)
            return TIMED_OUT
        return None

    fake.fail_delivery = fail_once
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
    assert brokers_answering(stats("UP", 6), seen)
    assert not brokers_answering(stats("UP", 6), seen)  # nothing new
