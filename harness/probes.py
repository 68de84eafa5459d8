"""Looking at a running worker from outside: its HTTP endpoints, its Prometheus metrics, polling."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

# A scrape: sample name -> [(labels, value)], as the Prometheus text parser yields them.
Samples = dict[str, list[tuple[dict[str, str], float]]]


def http_get(url: str, timeout_s: float = 2) -> tuple[int | None, str]:
    """(status, body); (None, error text) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        try:
            return error.code, error.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as unread:  # the body timed out (a loaded machine)
            return error.code, str(unread)
    except (OSError, http.client.HTTPException) as error:
        return None, str(error)


def endpoint_json(port: int, path: str, timeout_s: float = 2) -> tuple[int | None, dict[str, Any]]:
    """(status, JSON object) of one of the worker's endpoints (/readyz, /healthz); {} when the body is not
    a JSON object, {"unparsed": body} when it is not JSON at all."""
    status, body = http_get(f"http://127.0.0.1:{port}{path}", timeout_s)
    if status is None:
        return None, {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return status, {"unparsed": body}
    return status, parsed if isinstance(parsed, dict) else {}


def scrape(port: int, timeout_s: float = 3) -> Samples | None:
    """/metrics parsed: sample name -> [(labels, value)]; None if the worker does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout_s)
    if status != 200:
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def metric(samples: Samples, name: str) -> float:
    """A sample's value summed over its label sets (0 when absent)."""
    return sum(value for _, value in samples.get(name, []))


def model_info(samples: Samples) -> dict[str, str]:
    """The labels of ``worker_model_info`` (engine, precision, selection, ...)."""
    return dict(samples["worker_model_info"][0][0]) if samples.get("worker_model_info") else {}


def wait_for(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.2,
             message: str = "condition") -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {message}")


@dataclass(frozen=True)
class Probe:
    """One look at a worker's HTTP endpoints, `at` seconds after the prober started."""

    at: float
    ready: int | None  # /readyz status; None: nothing answered
    ready_body: dict[str, Any]
    live: int | None  # /healthz status
    blocked: frozenset[str]  # reasons whose worker_blocked gauge is 1

    @property
    def failing(self) -> bool:
        """/readyz says 503 and names a reason (the contract's fatal state, not mere start-up)."""
        return self.ready == 503 and bool(self.ready_body.get("reason"))


class HealthProber:
    """Polls /readyz, /healthz and /metrics of a worker on a background thread and keeps every answer.
    A context manager, or start() ... stop()."""

    def __init__(self, port: int, interval_s: float = 0.1) -> None:
        self._port = port
        self._interval_s = interval_s
        self._samples: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-prober", daemon=True)
        self.started_at = time.time()

    def start(self) -> HealthProber:
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> HealthProber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.time() - self.started_at
            ready, ready_body = endpoint_json(self._port, "/readyz")
            live, _ = http_get(f"http://127.0.0.1:{self._port}/healthz")
            try:
                metrics = scrape(self._port, timeout_s=2) or {}
            except ValueError:  # a body cut short by the worker's exit: no gauge seen this time
                metrics = {}
            blocked = frozenset(labels.get("reason", "") for labels, value in metrics.get("worker_blocked", [])
                                if value == 1)
            self._samples.append(Probe(at, ready, ready_body, live, blocked))
            self._stop.wait(self._interval_s)

    @property
    def samples(self) -> list[Probe]:
        return list(self._samples)

    def first(self, predicate: Callable[[Probe], bool]) -> Probe | None:
        return next((p for p in self._samples if predicate(p)), None)

    def blocked_reasons(self) -> set[str]:
        return {reason for p in self._samples for reason in p.blocked}

    @property
    def answered(self) -> list[Probe]:
        """The probes both /healthz and /readyz answered (not between restarts, not before serving)."""
        return [p for p in self._samples if p.live is not None and p.ready is not None]

    @property
    def health_red(self) -> int:
        """Answered probes where /healthz did not say 200."""
        return sum(1 for p in self.answered if p.live != 200)

    @property
    def ready_while_unhealthy(self) -> int:
        """Probes where /readyz said 200 while /healthz did not: the contract forbids it."""
        return sum(1 for p in self.answered if p.live != 200 and p.ready == 200)
