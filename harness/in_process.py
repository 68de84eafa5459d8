"""The worker's loop in this process, on a thread, against a real broker: settings and a running context."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def worker_settings(bootstrap: str, topics: dict[str, str], model_dir: Path | str, **overrides: Any):
    """A test's Settings: the topics (input, output, dlq), CPU float32, short waits; ``overrides`` on top."""
    from worker.settings import Settings

    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "input_topic": topics["input"],
        "output_topic": topics["output"],
        "dlq_topic": topics["dlq"],
        "group_id": f"group-{topics['input']}",
        "model": str(model_dir),
        "device": "cpu",
        "dtype": "float32",
        "metrics_port": 0,
        "statistics_interval_ms": 1000,
        "batch_max_wait_ms": 20,
        "shutdown_timeout_s": 20,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_worker(settings, classifier, metrics=None) -> Iterator[Any]:
    """A Worker on a background thread; stopped (drained, committed) on exit."""
    from worker.app import Worker

    worker = Worker(settings, classifier, metrics)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["clean"] = worker.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="worker-under-test", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.request_stop()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop"
        if "error" in outcome:
            raise outcome["error"]
        assert outcome.get("clean"), "worker stopped with unfinished records"
