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
# What differs between the same event on two clients or brokers: "[client#producer-1]", "[thrd:...]",
# "sasl_plaintext://host:port/1", "host:port/bootstrap".
_IDENTIFIERS = re.compile(r"\[[^\]]*\]|\S+://\S+|\S+:\d+/\S+")


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
    """For librdkafka's logger: each kind of warning once per interval, whichever client or broker said it.

    Lines of librdkafka's FAIL facility (a connection or authentication failure) are dropped: librdkafka
    reports the same failures through the error callback, which the worker logs, once per interval.
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(interval_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if message.startswith("FAIL "):
            return False
        key = f"{record.levelno}:{_VARIABLE.sub('#', _IDENTIFIERS.sub('', message))[:120]}"
        allowed, left_out = self._throttle.allow(key)
        if allowed and left_out:
            record.msg = f"{record.getMessage()} ({left_out} similar messages left out)"
            record.args = None
        return allowed
