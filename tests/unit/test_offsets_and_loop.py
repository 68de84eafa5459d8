"""The loop's bookkeeping with a fake Kafka (no broker): offsets, dead letters, failing batches."""

from __future__ import annotations

import json
from collections import deque


from worker.app import Worker, classify_isolating
from worker.kafka_io import OffsetTracker, parse_consumer_lag
from worker.metrics import WorkerMetrics
from worker.model import Encoding
from worker.records import InputRecord
from worker.settings import Settings

P = ("in", 0)


def test_tracker_commits_only_contiguous_done_offsets():
    t = OffsetTracker()
    for offset in (5, 6, 7, 8):
        t.add(P, offset)
    t.mark_done(P, 6)
    t.mark_done(P, 8)
    assert t.committable() == {}
    t.mark_done(P, 5)
    assert t.committable() == {P: 7}
    assert t.committable() == {}  # reported once
    t.mark_done(P, 7)
    assert t.committable() == {P: 9}
    assert len(t) == 0


def test_tracker_forgets_revoked_partitions():
    t = OffsetTracker()
    t.add(P, 1)
    t.forget([P])
    t.mark_done(P, 1)  # late acknowledgement of a revoked partition is ignored
    assert t.committable() == {} and len(t) == 0


def test_parse_consumer_lag():
    stats = {"topics": {"in": {"partitions": {"0": {"consumer_lag": 5}, "1": {"consumer_lag_stored": 7},
                                               "-1": {"consumer_lag": 3}, "2": {"consumer_lag": -1}}}}}
    assert parse_consumer_lag(json.dumps(stats)) == {("in", 0): 5, ("in", 1): 7}


class FakeClassifier:
    labels = ["negative", "positive"]
    info = {"model": "fake", "revision": "0", "device": "cpu", "dtype": "float32"}

    def __init__(self, poison: str | None = None):
        self.poison = poison
        self.calls = 0

    def encode(self, texts):
        return [Encoding([2] + [ord(c) % 100 + 5 for c in t] + [3], False) for t in texts]

    def predict(self, batch):
        self.calls += 1
        if self.poison is not None and any(ids[1:-1] == [ord(c) % 100 + 5 for c in self.poison] for ids in batch):
            raise RuntimeError("model exploded")
        return [[0.25, 0.75] if len(ids) % 2 else [0.9, 0.1] for ids in batch]


class FakeClients:
    """Enough of KafkaClients for the loop: scripted records in, produced records out."""

    def __init__(self, settings, handlers, on_lag=None, on_error=None):
        self.handlers = handlers
        self.incoming: deque[InputRecord] = deque()
        self.produced: list[tuple[str, bytes | None, bytes, list]] = []
        self.pending_reports: list = []
        self.reports: list = []
        self.stored: dict = {}
        self.committed_positions: dict = {}
        self.fail_next_deliveries = 0
        self.paused = False

    def start(self):
        self.handlers.on_assigned([P])

    def poll(self, max_messages, timeout_s):
        out = []
        while self.incoming and len(out) < max_messages:
            out.append(self.incoming.popleft())
        return out

    def produce(self, topic, key, value, headers, token):
        self.produced.append((topic, key, value, headers))
        error = None
        if self.fail_next_deliveries:
            self.fail_next_deliveries -= 1
            error = "Local: Message timed out"
        self.pending_reports.append((token, error))

    def serve_producer(self, timeout_s=0):
        self.reports.extend(self.pending_reports)
        self.pending_reports.clear()

    def take_reports(self):
        out, self.reports = self.reports, []
        return out

    def store_offsets(self, positions):
        self.stored.update(positions)

    def commit(self, positions=None):
        self.committed_positions.update(positions if positions is not None else self.stored)

    def flush(self, timeout_s):
        self.serve_producer()
        return 0

    def close(self):
        self.handlers.on_revoked([P])

    def pause(self, partitions):
        self.paused = True

    def resume(self, partitions):
        self.paused = False

    def assignment(self):
        return [P]


def make_worker(classifier, records, **overrides):
    settings = Settings(input_topic="in", output_topic="out", dlq_topic="dlq", metrics_port=0,
                        batch_max_wait_ms=0, **overrides)
    worker = Worker(settings, classifier, WorkerMetrics(), clients_factory=FakeClients)
    worker.clients.incoming.extend(records)
    return worker


def run_until_idle(worker, steps=200):
    worker.clients.start()
    import threading

    worker._inference_thread = threading.Thread(target=worker._inference_loop, daemon=True)
    worker._inference_thread.start()
    for _ in range(steps):
        worker._step()
        if not worker.clients.incoming and worker._windows_in_pipeline == 0 and len(worker._tracker) == 0:
            break
    assert worker._shutdown()


def records(values):
    return [InputRecord("in", 0, i, str(i).encode(), v, [], 1000) for i, v in enumerate(values)]


def test_every_record_gets_exactly_one_output_and_offsets_advance():
    values = ["좋다".encode(), b"\xff", None, "별로".encode(), b"  ", "최고".encode()]
    worker = make_worker(FakeClassifier(), records(values))
    run_until_idle(worker)
    produced = worker.clients.produced
    assert [p[1] for p in produced] == [b"0", b"1", b"2", b"3", b"4", b"5"]  # in consumption order
    topics = [p[0] for p in produced]
    assert topics == ["out", "dlq", "dlq", "out", "dlq", "out"]
    assert worker.clients.committed_positions[P] == 6
    m = worker.metrics
    assert m.dead_letters.labels(reason="invalid_utf8")._value.get() == 1
    assert m.dead_letters.labels(reason="tombstone")._value.get() == 1
    assert m.dead_letters.labels(reason="empty_text")._value.get() == 1
    assert m.produced.labels(topic="out")._value.get() == 3


def test_failed_delivery_is_retried_not_skipped():
    worker = make_worker(FakeClassifier(), records(["하나".encode(), "둘".encode()]))
    worker.clients.fail_next_deliveries = 1
    run_until_idle(worker)
    outputs = [p for p in worker.clients.produced if p[0] == "out"]
    assert len(outputs) == 3  # one failed attempt, then both delivered
    assert worker.clients.committed_positions[P] == 2
    assert worker.metrics.errors.labels(kind="delivery")._value.get() == 1


def test_failing_text_is_isolated_and_dead_lettered():
    texts = ["가", "나", "폭탄", "다", "라"]
    worker = make_worker(FakeClassifier(poison="폭탄"), records([t.encode() for t in texts]))
    run_until_idle(worker)
    by_key = {p[1]: p for p in worker.clients.produced}
    assert by_key[b"2"][0] == "dlq"
    assert dict(by_key[b"2"][3])["worker.error.kind"] == b"inference_error"
    assert b"model exploded" in dict(by_key[b"2"][3])["worker.error.reason"]
    assert all(by_key[k][0] == "out" for k in (b"0", b"1", b"3", b"4"))
    assert worker.clients.committed_positions[P] == 5


def test_classify_isolating_bisects():
    classifier = FakeClassifier(poison="x")
    encodings = classifier.encode(["a", "b", "x", "c"])
    probs, failures, _ = classify_isolating(classifier, encodings, 1)
    assert list(failures) == [2] and probs[2] is None
    assert all(p is not None for i, p in enumerate(probs) if i != 2)


def test_backpressure_pauses_and_resumes():
    worker = make_worker(FakeClassifier(), records([f"글{i}".encode() for i in range(50)]), max_in_flight_messages=10)
    worker.clients.start()
    worker._accept([worker.clients.incoming.popleft() for _ in range(12)])
    worker._apply_backpressure()
    assert worker.clients.paused
    worker._tracker.forget([P])
    worker._apply_backpressure()
    assert not worker.clients.paused


def test_result_value_matches_schema():
    worker = make_worker(FakeClassifier(), records(["좋다".encode()]))
    run_until_idle(worker)
    value = json.loads(worker.clients.produced[0][2])
    assert set(value) >= {"input", "label", "score", "probabilities", "model", "source", "latency_ms"}
    assert value["model"] == {"id": "fake", "revision": "0"}


def test_due_window_keeps_filling_while_the_model_is_backlogged():
    """Under load, windows grow with the traffic instead of queueing many small ones."""
    worker = make_worker(FakeClassifier(), [], batch_max_messages=1000)
    worker.clients.start()  # no inference thread: dispatched windows stay queued
    all_records = records([f"글{i}".encode() for i in range(30)])
    for chunk in (all_records[0:5], all_records[5:10], all_records[10:20], all_records[20:30]):
        worker.clients.incoming.extend(chunk)
        worker._step()
    assert worker._windows_in_pipeline == 1  # the model is busy with the first window
    assert len(worker._batcher) == 25  # the rest waits in one growing window
    worker._inference_thread = __import__("threading").Thread(target=worker._inference_loop, daemon=True)
    worker._inference_thread.start()
    for _ in range(200):
        worker._step()
        if worker._windows_in_pipeline == 0 and len(worker._tracker) == 0:
            break
    assert worker._shutdown()
    assert worker.metrics.batch_messages._sum.get() == 30
    assert worker.clients.committed_positions[P] == 30


class FakeTransactionalClients(FakeClients):
    """Transactions that fail to commit `fail_commits` times with a non-retriable error."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_commits = 0
        self.transactions: list[tuple[str, dict]] = []
        self.rewound: list[dict] = []

    def begin_transaction(self):
        self.transactions.append(("begin", {}))

    def commit_transaction(self, positions, timeout_s=60):
        if self.fail_commits:
            self.fail_commits -= 1
            raise RuntimeError("broker said no")
        self.transactions.append(("commit", dict(positions)))

    def abort_transaction(self, timeout_s=60):
        self.transactions.append(("abort", {}))

    def committed(self, partitions, timeout_s=10):
        return {P: 0}

    def rewind(self, positions):
        self.rewound.append(positions)


def make_transactional_worker(values):
    settings = Settings(input_topic="in", output_topic="out", dlq_topic="dlq", metrics_port=0, batch_max_wait_ms=0,
                        delivery="exactly_once")
    worker = Worker(settings, FakeClassifier(), WorkerMetrics(), clients_factory=FakeTransactionalClients)
    worker.clients.incoming.extend(records(values))
    return worker


def test_exactly_once_commits_offsets_inside_each_transaction():
    worker = make_transactional_worker(["좋다".encode(), b"\xff", "별로".encode()])
    run_until_idle(worker)
    commits = [positions for kind, positions in worker.clients.transactions if kind == "commit"]
    assert commits and commits[-1] == {P: 3}
    assert worker.clients.stored == {}  # no offset is committed outside a transaction


def test_failed_transaction_is_aborted_and_the_records_read_again():
    worker = make_transactional_worker(["좋다".encode(), "별로".encode()])
    worker.clients.fail_commits = 1
    worker.clients.start()
    worker._accept([worker.clients.incoming.popleft() for _ in range(2)])
    window = worker._batcher.take()
    worker._publish(worker._classify_window(window, worker._generation).window)
    assert [kind for kind, _ in worker.clients.transactions] == ["begin", "abort"]
    assert worker.clients.rewound == [{P: 0}]
    assert worker.metrics.errors.labels(kind="transaction")._value.get() == 1
    assert len(worker._tracker) == 0  # forgotten: the records come again from the committed offset
