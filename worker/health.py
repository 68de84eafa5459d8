"""What /healthz and /readyz answer, and the gauges that say the same to Prometheus.

:class:`Health` owns the ``worker_ready`` and ``worker_blocked`` gauges of the metrics it is given:
setting the phase or blocking a reason sets them, so the endpoints and the gauges never disagree.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from worker.metrics import WorkerMetrics


class Health:
    """What /healthz and /readyz answer. The loop beats and sets the phase; the server reads.

    Phases: ``loading`` (the model), ``starting`` (connecting, joining the group), ``serving``,
    ``stopping``. Loading and starting count as alive: every step of them is bounded by the
    watchdog. While serving, the loop must beat at least every ``stale_after_s``. Ready means
    serving, alive and not blocked, so /readyz is never green while /healthz is red.

    With ``metrics``, ``worker_ready`` is 1 while serving and ``worker_blocked{reason}`` is 1 while
    that reason blocks the worker (:data:`worker.policy.FATAL_REASONS`).
    """

    def __init__(
        self,
        metrics: WorkerMetrics | None = None,
        stale_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._last_beat = clock()
        self.phase = "loading"
        self.partitions = 0
        self.blocked: dict[str, str] = {}

    def beat(self) -> None:
        self._last_beat = self._clock()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.beat()
        self._show_ready()

    def block(self, reason: str, detail: str) -> None:
        self.blocked[reason] = detail
        if self._metrics is not None:
            self._metrics.blocked.labels(reason=reason).set(1)
        self._show_ready()

    def unblock(self, reason: str) -> None:
        if self.blocked.pop(reason, None) is not None and self._metrics is not None:
            self._metrics.blocked.labels(reason=reason).set(0)
        self._show_ready()

    def _show_ready(self) -> None:
        # worker_ready says what /readyz says (less the heartbeat, which a scrape cannot see stop).
        if self._metrics is not None:
            self._metrics.ready.set(1 if self.phase == "serving" and not self.blocked else 0)

    def live(self) -> tuple[bool, dict[str, object]]:
        if self.phase in ("loading", "starting"):
            return True, {"phase": self.phase}
        age = self._clock() - self._last_beat
        return age <= self._stale_after_s, {"phase": self.phase, "heartbeat_age_s": round(age, 3)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        alive, _ = self.live()
        ok = self.phase == "serving" and alive and not self.blocked
        detail: dict[str, object] = {"phase": self.phase, "alive": alive, "assigned_partitions": self.partitions}
        if self.blocked:
            detail["reason"] = "; ".join(f"{k}: {v}" for k, v in self.blocked.items())
        return ok, detail
