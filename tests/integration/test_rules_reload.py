"""Issue 16 part 4: moderation rules from WORKER_ROUTES_FILE, reloaded while a `worker run` process
consumes a live stream through the real broker, without leaving its consumer group.

Comments stream in the whole time. The file starts as version 1 (every result copied to route
topic A); it is replaced by version 2 (only one label above a score copied, to a new topic B), then by an
invalid file (nothing changes; the metrics say so), then SIGHUP asks for a reload of that invalid
file, then version 2 is written back. From the topics: every result carries the version that
routed it, its copies follow that version's rules and no other, and per input partition the
version switches once, from 1 to 2 (windows are rendered under one version, in order). The
worker's group membership (member id, assignment) is the same at the end as at the start, and it
logged no revocation and one assignment.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import Producer

from harness.clients import consume_all
from harness.probes import scrape, wait_for
from harness.processes import free_port, start_worker_process, terminate, wait_ready, worker_env
from harness.topics import create_topics
from tests.integration.test_moderation import thresholds

pytestmark = pytest.mark.integration

HEADER = "worker.rules.version"


def write_rules(path, routes) -> str:
    """Replace the rules file at once (write aside, rename); returns the version the worker will name."""
    import hashlib

    content = json.dumps({"routes": routes, "default_threshold": 0.5}).encode()
    aside = path.with_suffix(".tmp")
    aside.write_bytes(content)
    os.replace(aside, path)
    return hashlib.sha256(content).hexdigest()[:12]


class Stream:
    """Comments produced steadily on a thread until stopped; the keys are 0, 1, 2, ..."""

    def __init__(self, bootstrap: str, topic: str, rows, per_tick: int = 10, tick_s: float = 0.05) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self._topic, self._rows, self._per_tick, self._tick_s = topic, rows, per_tick, tick_s
        self._stop = threading.Event()
        self.count = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self._per_tick):
                _, doc, _ = self._rows[self.count % len(self._rows)]
                self._producer.produce(self._topic, key=str(self.count).encode(), value=doc.encode())
                self.count += 1
            self._producer.poll(0)
            time.sleep(self._tick_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        assert self._producer.flush(30) == 0, "input records not delivered"
        return self.count


def members(bootstrap: str, group: str) -> list[tuple[str, list[tuple[str, int]]]]:
    """Each member of the group: its member id (new whenever a consumer joins again) and its partitions."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(30)
    return sorted(
        (m.member_id, sorted((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])))
        for m in description.members
    )


def sample(port: int, name: str, labels: dict | None = None) -> float | None:
    samples = scrape(port) or {}
    for found, value in samples.get(name, []):
        if found == (labels or {}):
            return value
    return None


def test_rules_reloaded_mid_stream_from_the_next_window_without_leaving_the_group(
        kafka_bootstrap, topics, tiny_model_dir, tiny_classifier, nsmc_rows, tmp_path, fault_report):
    route_a, route_b = f"a-{topics['input']}", f"b-{topics['input']}"
    create_topics(kafka_bootstrap, {route_a: 1, route_b: 1})
    # The tiny random model's most frequent label and its median score: version 2 copies a real subset.
    label, min_score, _ = thresholds(tiny_classifier, [doc for _, doc, _ in nsmc_rows[:600]])
    path = tmp_path / "rules.json"
    first = write_rules(path, [{"name": "all", "topic": route_a}])
    port = free_port()
    group = f"group-{topics['input']}"
    env = worker_env(kafka_bootstrap, topics, tiny_model_dir, WORKER_ROUTES_FILE=str(path),
                     WORKER_METRICS_PORT=str(port), WORKER_BATCH_MAX_MESSAGES="32", WORKER_ENGINE="torch")
    log = tmp_path / "worker.log"
    process = start_worker_process(env, log)
    stream = None
    try:
        wait_ready(process, port, 360, log, assigned=True)
        assert sample(port, "worker_rules_info", {"version": first}) == 1
        members_before = []

        def joined() -> bool:
            try:
                members_before[:] = members(kafka_bootstrap, group)
            except Exception:  # noqa: BLE001 - the coordinator may still be loading: ask again
                return False
            return bool(members_before)

        wait_for(joined, 60, interval_s=1, message="the worker in its group")
        assert len(members_before) == 1 and len(members_before[0][1]) == 3
        stream = Stream(kafka_bootstrap, topics["input"], nsmc_rows)
        wait_for(lambda: (sample(port, "worker_results_produced_total", {"topic": topics["output"]}) or 0) > 200, 60)

        # Version 2, noticed from the file alone (no signal): a new topic and a label filter.
        second = write_rules(path, [{"name": "one-label", "topic": route_b, "labels": [label], "min_score": min_score}])
        wait_for(lambda: sample(port, "worker_rules_info", {"version": second}) == 1, 30)
        assert sample(port, "worker_rules_reloads_total", {"outcome": "applied"}) == 1
        produced = sample(port, "worker_results_produced_total", {"topic": topics["output"]}) or 0
        wait_for(lambda: (sample(port, "worker_results_produced_total", {"topic": topics["output"]}) or 0)
                 > produced + 200, 60)

        # An invalid file: the rules in force stay, one line, the metrics say so.
        path.write_text(json.dumps({"routes": [{"name": "bad", "topic": topics["output"]}]}))
        wait_for(lambda: sample(port, "worker_rules_valid") == 0, 30)
        assert sample(port, "worker_rules_reloads_total", {"outcome": "invalid"}) == 1
        # SIGHUP reads it again (and does not end the process): still invalid, said again.
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: sample(port, "worker_rules_reloads_total", {"outcome": "invalid"}) == 2, 30)
        assert sample(port, "worker_rules_info", {"version": second}) == 1
        # Version 2 written back: valid again, nothing to apply.
        assert write_rules(path, [{"name": "one-label", "topic": route_b, "labels": [label], "min_score": min_score}]) == second
        wait_for(lambda: sample(port, "worker_rules_valid") == 1, 30)
        assert sample(port, "worker_rules_reloads_total", {"outcome": "applied"}) == 1

        count = stream.stop()
        stream = None
        results = consume_all(kafka_bootstrap, topics["output"], expected=count, timeout_s=120, idle_s=3)
        copies_a = consume_all(kafka_bootstrap, route_a, idle_s=3, timeout_s=60)
        copies_b = consume_all(kafka_bootstrap, route_b, idle_s=3, timeout_s=60)
        members_after = members(kafka_bootstrap, group)
        assert process.poll() is None, log.read_text()
        text = log.read_text()  # before the shutdown, which revokes the partitions on leaving
    finally:
        if stream is not None:
            stream.stop()
        code, _ = terminate(process, 60)
    assert code == 0, log.read_text()[-3000:]

    main = {r.key: r for r in results}
    assert len(main) == count, f"{count - len(main)} results missing"
    versions = {k: r.headers[HEADER] for k, r in main.items()}
    assert set(versions.values()) == {first, second}
    # Each result's copies follow the rules of the version it carries, and only those.
    expect_a = {k for k, v in versions.items() if v == first}
    expect_b = {k for k, v in versions.items()
                if v == second and main[k].json()["label"] == label and main[k].json()["score"] >= min_score}
    assert sorted(r.key for r in copies_a) == sorted(expect_a)
    assert sorted(r.key for r in copies_b) == sorted(expect_b) and expect_b
    assert all(r.headers[HEADER] == first and r.headers["worker.route"] == "all" for r in copies_a)
    assert all(r.headers[HEADER] == second and r.headers["worker.route"] == "one-label" for r in copies_b)
    # Per input partition, in offset order: version 1, then version 2, one switch.
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for r in results:
        source = r.json()["source"]
        by_partition[source["partition"]].append((source["offset"], r.headers[HEADER]))
    for partition, seen in by_partition.items():
        order = [v for _, v in sorted(seen)]
        switch = order.index(second) if second in order else len(order)
        assert order == [first] * switch + [second] * (len(order) - switch), f"partition {partition}: versions interleave"
    # The worker never left its group.
    assert members_after == members_before
    assert text.count("partitions assigned") == 1 and "partitions revoked" not in text and "partitions lost" not in text
    assert text.count("is invalid, keeping version") == 2
    fault_report("rules-reload", results=count, version_1=len(expect_a), version_2=count - len(expect_a),
                 routed_b=len(expect_b))
