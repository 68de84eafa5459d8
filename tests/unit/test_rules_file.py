"""WORKER_ROUTES_FILE through the loop (the fake Kafka port): rules read at start, swapped between
windows on a reload, an invalid file keeping the rules in force, and what the metrics say."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

from tests.unit.test_loop import FakeClassifier, drive, finish, header, keys, make_worker
from worker.errors import ConfigError
from worker.metrics import WorkerMetrics
from worker.pipeline.render import Renderer
from worker.rules_file import RulesFile
from worker.settings import load_settings
from worker.wire.routing import Route
from worker.wire.rules import RULES_VERSION_HEADER, parse_rules, rules_from

NEGATIVE = {"name": "neg", "topic": "neg", "labels": ["negative"]}
POSITIVE = {"name": "pos", "topic": "pos", "labels": ["positive"]}
# FakeClassifier: an odd number of characters -> positive 0.75, an even number -> negative 0.9.
ODD, EVEN = "가".encode(), "가나".encode()


def write(path, *routes, **more) -> str:
    """Replace the file at once (as an editor or a ConfigMap update does); returns the version."""
    content = json.dumps({"routes": list(routes), **more}).encode()
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)
    return parse_rules(content, reserved_topics=()).version


def version_of(written) -> str:
    return header(written, RULES_VERSION_HEADER).decode()


def value(metrics: WorkerMetrics, name: str, labels: dict | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_rules_changed_mid_stream_apply_from_the_next_window(tmp_path):
    path = tmp_path / "rules.json"
    first = write(path, NEGATIVE)
    worker, fake = make_worker(routes_file=str(path))
    fake.feed(0, [EVEN, ODD])
    drive(worker, fake)
    second = write(path, POSITIVE)
    worker.request_reload()  # what SIGHUP does
    fake.feed(0, [EVEN, ODD])
    finish(worker, fake)

    out = fake.visible("out")
    assert keys(out) == [b"0-0", b"0-1", b"0-2", b"0-3"]
    assert [version_of(w) for w in out] == [first, first, second, second]
    assert keys(fake.visible("neg")) == [b"0-0"] and version_of(fake.visible("neg")[0]) == first
    assert keys(fake.visible("pos")) == [b"0-3"] and version_of(fake.visible("pos")[0]) == second
    m = worker.metrics
    assert value(m, "worker_rules_reloads_total", {"outcome": "applied"}) == 1
    assert value(m, "worker_rules_valid") == 1
    assert value(m, "worker_rules_info", {"version": second}) == 1
    assert value(m, "worker_rules_info", {"version": first}) is None
    assert fake.calls.count("close") <= 1 and fake.committed == {("in", 0): 4}


def test_a_window_in_the_model_when_the_rules_change_is_rendered_whole_under_the_new_ones(tmp_path):
    path = tmp_path / "rules.json"
    write(path, NEGATIVE)
    gate = threading.Event()
    worker, fake = make_worker(FakeClassifier(gate=gate), routes_file=str(path))
    fake.feed(0, [EVEN, ODD, EVEN])
    drive(worker, fake, until=lambda: worker.inference.busy)
    second = write(path, POSITIVE)
    worker.request_reload()
    worker.step()  # the reload happens while the window is in the model
    gate.set()
    finish(worker, fake)
    assert {version_of(w) for w in fake.visible("out")} == {second}
    assert fake.visible("neg") == [] and keys(fake.visible("pos")) == [b"0-1"]


def test_an_invalid_file_changes_nothing_and_is_said_once(tmp_path, caplog):
    path = tmp_path / "rules.json"
    first = write(path, NEGATIVE)
    worker, fake = make_worker(routes_file=str(path))
    fake.feed(0, [EVEN])
    drive(worker, fake)
    path.write_text('{"routes": [{"name": "neg", "topic": "out"}]}')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.rules_file"):
        worker.request_reload()
        fake.feed(0, [EVEN])
        drive(worker, fake)
        worker.rules_file._last_check = float("-inf")  # a later periodic look at the same bad file
        worker.step()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "invalid" in lines[0] and f"keeping version {first}" in lines[0]
    assert "which is the input, output or dead-letter topic" in lines[0]
    assert worker.renderer.rules.version == first
    assert [version_of(w) for w in fake.visible("out")] == [first, first]
    assert keys(fake.visible("neg")) == [b"0-0", b"0-1"]
    m = worker.metrics
    assert value(m, "worker_rules_reloads_total", {"outcome": "invalid"}) == 1
    assert value(m, "worker_rules_valid") == 0
    assert value(m, "worker_rules_info", {"version": first}) == 1

    third = write(path, POSITIVE)  # a valid file again: applied, valid again
    worker.request_reload()
    fake.feed(0, [ODD])
    finish(worker, fake)
    assert version_of(fake.visible("out")[-1]) == third and keys(fake.visible("pos")) == [b"0-2"]
    assert value(m, "worker_rules_valid") == 1


def test_a_change_of_the_file_is_noticed_without_a_signal_at_most_once_per_interval(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("routes: []\n")
    now = [0.0]
    metrics = WorkerMetrics()
    rules_file = RulesFile(path, ("in", "out", "dlq"), ("negative", "positive"), metrics, lambda: now[0])
    first = rules_file.load()
    path.write_text("routes: [{name: neg, topic: neg}]\n")
    now[0] = 0.5
    assert rules_file.poll() is None  # not yet looked at
    now[0] = 1.1
    second = rules_file.poll()
    assert second is not None and second.version != first.version and second.topics == ("neg",)
    now[0] = 2.5
    os.utime(path)  # touched, same content: not a reload
    assert rules_file.poll() is None
    assert value(metrics, "worker_rules_reloads_total", {"outcome": "applied"}) == 1
    assert value(metrics, "worker_rules_reloads_total", {"outcome": "unchanged"}) is None

    path.unlink()  # gone: invalid (once), the rules in force stay
    now[0] = 4.0
    assert rules_file.poll() is None and value(metrics, "worker_rules_valid") == 0
    now[0] = 5.0
    assert rules_file.poll() is None
    assert value(metrics, "worker_rules_reloads_total", {"outcome": "invalid"}) == 1
    path.write_text("routes: [{name: neg, topic: neg}]\n")  # back as it was: valid, nothing to apply
    now[0] = 6.0
    assert rules_file.poll() is None and value(metrics, "worker_rules_valid") == 1
    rules_file.request_reload()  # a signal with nothing new
    assert rules_file.poll() is None
    assert value(metrics, "worker_rules_reloads_total", {"outcome": "unchanged"}) == 1


def test_a_missing_or_invalid_file_at_start_is_a_configuration_error(tmp_path):
    worker, _ = make_worker(routes_file=str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match="WORKER_ROUTES_FILE: cannot read"):
        worker.start()
    bad = tmp_path / "bad.json"
    bad.write_text('{"routes": [{"name": "x", "topic": "x", "labels": ["toxic"]}]}')
    worker, _ = make_worker(routes_file=str(bad))
    with pytest.raises(ConfigError, match="toxic the model does not have"):
        worker.start()


def test_routes_and_a_routes_file_together_are_a_configuration_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKER_ROUTES", json.dumps([NEGATIVE]))
    monkeypatch.setenv("WORKER_ROUTES_FILE", str(tmp_path / "rules.json"))
    with pytest.raises(ConfigError, match="WORKER_ROUTES and WORKER_ROUTES_FILE are both set"):
        load_settings()


def test_environment_rules_carry_version_env_and_a_reload_request_changes_nothing(caplog):
    worker, fake = make_worker(routes=[NEGATIVE])
    fake.feed(0, [EVEN])
    with caplog.at_level(logging.WARNING):
        worker.request_reload()
    finish(worker, fake)
    assert version_of(fake.visible("out")[0]) == "env" == version_of(fake.visible("neg")[0])
    assert "nothing to reload" in caplog.text
    assert value(worker.metrics, "worker_rules_info", {"version": "env"}) == 1


def test_new_route_topics_count_in_the_size_limit_and_the_version_header_in_every_budget():
    limits = {"out": 900_000, "dlq": 900_000, "small": 50_000}
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "0"}, rules_from([]), lambda t: limits.get(t, 800_000))
    assert renderer.limit == 900_000
    renderer.use(rules_from([Route(name="r", topic="small")], version="abcdef012345"))
    assert renderer.limit == 50_000
    assert renderer.rules.version_header == (RULES_VERSION_HEADER, b"abcdef012345")


@pytest.mark.parametrize("size", range(47_000, 50_001, 250))
def test_results_routed_copies_and_dead_letters_with_the_version_header_fit_the_limit(size):
    from worker.pipeline.intake import Entry
    from worker.wire.sizes import budget, record_size
    from worker.wire.types import Comment, InputRecord, Prediction, Rejection

    rules = rules_from([Route(name="a-rather-long-route-name", topic="routed")], version="0123456789ab")
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "0"}, rules, lambda t: 50_000)
    record = InputRecord("in", 0, 7, b"k" * 100, ("가" * (size // 3)).encode(), [("h", b"v" * 50)], 1)
    prediction = Prediction("negative", 0.9, {"negative": 0.9, "positive": 0.1}, False, 5)
    for entry in (Entry(Comment(record, record.value.decode()), prediction=prediction),
                  Entry(Rejection(record, "too_large", "x" * 2000))):
        messages = renderer.render(entry, 0.0).messages
        assert all(record_size(m.key, m.value, m.headers) <= budget(renderer.limit) for m in messages)
        assert all(dict(m.headers)[RULES_VERSION_HEADER] == b"0123456789ab" for m in messages)
    replacement = renderer.dead_letter(record, "produce_error", "refused", 0.0)
    assert record_size(replacement.key, replacement.value, replacement.headers) <= budget(renderer.limit)
    assert dict(replacement.headers)[RULES_VERSION_HEADER] == b"0123456789ab"


def test_read_rules_checks_a_file_before_the_model_is_known(tmp_path):
    from worker.rules_file import read_rules

    path = tmp_path / "rules.json"
    path.write_text('{"routes": [{"name": "x", "topic": "x", "labels": ["toxic"]}]}')
    assert read_rules(path, ("in", "out", "dlq")).topics == ("x",)  # labels are the model's to check
    with pytest.raises(ConfigError, match="toxic the model does not have"):
        read_rules(path, ("in", "out", "dlq"), ("negative", "positive"))
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"WORKER_ROUTES_FILE .*rules.json: not valid JSON"):
        read_rules(path, ("in", "out", "dlq"))
