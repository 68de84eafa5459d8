"""Saying a repeated thing once per interval: for the worker's own warnings and for librdkafka's log.

A broker that refuses the worker's password answers every retry with the same error, several
times a second; the log should say it once per interval, with how many repeats it left out.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable

_VARIABLE = re.compile(r"\d+")


class Throttle:
    """``allow(key)`` is true at most once per ``interval_s`` for each key; it counts the rest."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log now, how many were left out since the last time)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)


class ThrottleFilter(logging.Filter):
    """A logging filter passing each kind of message (its text with numbers blanked) once per interval."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(interval_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = f"{record.name}:{record.levelno}:{_VARIABLE.sub('#', record.getMessage())[:120]}"
        allowed, left_out = self._throttle.allow(key)
        if allowed and left_out:
            record.msg = f"{record.getMessage()} ({left_out} similar messages left out)"
            record.args = None
        return allowed
