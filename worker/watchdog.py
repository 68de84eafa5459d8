"""Deadlines for calls that may not return: a watchdog thread that ends the process when one overruns.

librdkafka does not always honour its own timeouts (librdkafka issues #5456 and #5511:
``send_offsets_to_transaction`` blocked for over ten minutes with a 60 s timeout), and a Python
thread cannot be interrupted while it is inside a C call. So the worker cannot trust a blocking
client call to come back: every such call runs inside :meth:`Watchdog.call`, and when one is still
running past its deadline (plus a grace period), the watchdog thread reports which call it was and
ends the process, so that the orchestrator starts a fresh one. That is safe in both delivery modes:
at-least-once re-reads from the last commit, and with exactly-once the new producer fences the old.

The same thread enforces the whole-process shutdown deadline (:meth:`arm_exit`).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from worker.errors import EXIT_FATAL

log = logging.getLogger(__name__)

# A call is given this much longer than the timeout it was asked to honour before the watchdog acts:
# librdkafka rounds timeouts and needs a moment to return an error once one has passed.
GRACE_S = 2.0


@dataclass(frozen=True)
class Overrun:
    """A watched call (or the shutdown itself) that ran past its deadline."""

    call: str
    limit_s: float
    elapsed_s: float
    exit_code: int

    def describe(self) -> str:
        return f"{self.call} did not return within {self.limit_s:.0f} s (stuck for {self.elapsed_s:.0f} s)"


class Watchdog:
    """Watches blocking calls and one optional process deadline from a daemon thread.

    ``on_overrun`` runs on the watchdog thread once, for the first overrun; it should make the
    worker not-ready, log one line and end the process (the default does the last two).
    Nothing starts until :meth:`start`; the constructor does no I/O and starts no thread.
    """

    def __init__(
        self,
        on_overrun: Callable[[Overrun], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = GRACE_S,
        interval_s: float = 0.1,
    ) -> None:
        self._on_overrun = on_overrun or default_on_overrun
        self._clock = clock
        self._grace_s = grace_s
        self._interval_s = interval_s
        self._calls: dict[int, tuple[str, float, float, int]] = {}  # id -> (name, started, deadline, exit code)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._exit_at: tuple[float, str, int] | None = None
        self._fired = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @contextmanager
    def call(self, name: str, timeout_s: float, exit_code: int = EXIT_FATAL) -> Iterator[None]:
        """Run the ``with`` body as a watched call that must end within ``timeout_s`` (+ grace)."""
        started = self._clock()
        ident = next(self._ids)
        with self._lock:
            self._calls[ident] = (name, started, started + max(0.0, timeout_s) + self._grace_s, exit_code)
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(ident, None)

    def arm_exit(self, deadline: float, reason: str, exit_code: int) -> None:
        """End the process at ``deadline`` (monotonic clock) if it is still running then."""
        with self._lock:
            if self._exit_at is None or deadline < self._exit_at[0]:
                self._exit_at = (deadline, reason, exit_code)

    def check(self) -> Overrun | None:
        """The first overrun at this moment, if any (the thread calls this; tests may too)."""
        now = self._clock()
        with self._lock:
            for name, started, deadline, code in self._calls.values():
                if now > deadline:
                    return Overrun(name, deadline - started - self._grace_s, now - started, code)
            if self._exit_at is not None and now > self._exit_at[0]:
                deadline, reason, code = self._exit_at
                return Overrun(reason, 0.0, now - deadline, code)
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self._interval_s):
            overrun = self.check()
            if overrun is not None and not self._fired:
                self._fired = True
                self._on_overrun(overrun)


def default_on_overrun(overrun: Overrun) -> None:
    log.critical("%s; exiting so that a fresh process takes over", overrun.describe())
    hard_exit(overrun.exit_code, exit_line(overrun.exit_code, overrun.describe()))


def exit_line(code: int, reason: str) -> str:
    """The last line the process writes: ``worker: fatal: ...`` for exit code 4."""
    return f"worker: fatal: {reason}" if code == EXIT_FATAL else f"worker: stopped (exit {code}): {reason}"


def hard_exit(code: int, last_line: str | None = None) -> None:
    """End the process now, from any thread, whatever the main thread is blocked in.

    ``sys.exit`` would wait for the main thread, which may be stuck inside librdkafka, and the
    Kafka clients' destructors may block as well. Log handlers are flushed first, then
    ``last_line`` is written to stderr.
    """
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    if last_line:
        try:
            os.write(2, (" ".join(last_line.split()) + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
    os._exit(code)
