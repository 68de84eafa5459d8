"""WORKER_ROUTES_FILE: the moderation rules read from a file, and reloaded while the worker runs.

The file is read at start (an invalid one is a configuration error) and again when asked
(:meth:`RulesFile.request_reload`, which SIGHUP calls; safe from any thread) or when its content
changes. The loop calls :meth:`RulesFile.poll` between windows: at most once per ``check_interval_s``
it compares the file's mtime, size and inode with the last ones seen, and only when they differ
reads it and compares the content's hash, so a file left alone costs one ``stat`` a second. New
rules are parsed and checked exactly as at start (:func:`worker.wire.rules.parse_rules`); an invalid
file keeps the rules in force, says why in one log line and sets ``worker_rules_valid`` to 0 until
a valid file is applied. Nothing here touches Kafka: a reload never leaves the consumer group.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from worker.errors import ConfigError
from worker.metrics import WorkerMetrics
from worker.wire.rules import Rules, parse_rules, rules_version

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
APPLIED, UNCHANGED, INVALID = "applied", "unchanged", "invalid"

# What identifies a file's state without reading it: (mtime_ns, size, inode); None when it cannot be stat'ed.
Signature = tuple[int, int, int] | None


def read_rules(path: Path, reserved_topics: Sequence[str], model_labels: Sequence[str] | None = None) -> Rules:
    """The rules in ``path``, or a ConfigError naming the problem (labels are checked when given).

    The command line calls it before the model loads, so a typo fails in a second rather than after
    the load; :meth:`RulesFile.load` calls it again with the model's labels.
    """
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"WORKER_ROUTES_FILE: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return _parse(Path(path), content, reserved_topics, model_labels)
    except ValueError as exc:
        raise ConfigError(f"WORKER_ROUTES_FILE {path}: {exc}") from None


def _parse(path: Path, content: bytes, reserved_topics: Sequence[str], model_labels: Sequence[str] | None) -> Rules:
    yaml = path.suffix.lower() in (".yaml", ".yml")
    return parse_rules(content, reserved_topics=reserved_topics, model_labels=model_labels, yaml=yaml)


class RulesFile:
    """The rules file: :meth:`load` at start, :meth:`poll` between windows."""

    def __init__(
        self,
        path: Path,
        reserved_topics: Sequence[str],
        model_labels: Sequence[str],
        metrics: WorkerMetrics,
        clock: Callable[[], float],
        check_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self._reserved = tuple(reserved_topics)
        self._labels = tuple(model_labels)
        self._metrics = metrics
        self._clock = clock
        self._interval = check_interval_s
        self._requested = threading.Event()
        self._signature: Signature = None
        self._last_check = float("-inf")
        self._version: str | None = None  # of the rules in force
        self._rejected: str | None = None  # the version last found invalid, not reported again when seen again

    def request_reload(self) -> None:
        """Read the file again at the next window, whatever its mtime says. Safe from any thread."""
        self._requested.set()

    def load(self) -> Rules:
        """The rules at start; a missing or invalid file is a configuration error."""
        self._signature = self._stat()
        rules = read_rules(self.path, self._reserved, self._labels)
        self._in_force(rules.version)
        self._metrics.rules_valid.set(1)
        self._last_check = self._clock()
        return rules

    def poll(self) -> Rules | None:
        """New valid rules if the file was asked for or has changed since the last look, else None."""
        requested = self._requested.is_set()
        now = self._clock()
        if not requested and now - self._last_check < self._interval:
            return None
        self._requested.clear()
        self._last_check = now
        signature = self._stat()
        if not requested and signature == self._signature:
            return None
        self._signature = signature
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            self._invalid(f"cannot read it: {exc.strerror or exc}", f"unreadable:{signature}", requested)
            return None
        version = rules_version(content)
        if version == self._version:
            if requested:
                self._metrics.rules_reloads.labels(outcome=UNCHANGED).inc()
                log.info("rules file %s reloaded: unchanged (version %s)", self.path, version)
            self._recovered()
            return None
        try:
            rules = self._parse(content)
        except ValueError as exc:
            self._invalid(str(exc), version, requested)
            return None
        previous = self._version
        self._in_force(rules.version)
        self._recovered()
        self._metrics.rules_reloads.labels(outcome=APPLIED).inc()
        log.info("rules file %s reloaded: version %s replaces %s from the next window on (%d routes)",
                 self.path, rules.version, previous, len(rules.routes))
        return rules

    def _parse(self, content: bytes) -> Rules:
        return _parse(self.path, content, self._reserved, self._labels)

    def _stat(self) -> Signature:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _in_force(self, version: str) -> None:
        self._version = version
        self._metrics.rules_in_force(version)

    def _recovered(self) -> None:
        # The file is back to rules that work (the ones in force, or new ones): nothing is wrong any more.
        self._rejected = None
        self._metrics.rules_valid.set(1)

    def _invalid(self, problem: str, version: str, requested: bool) -> None:
        self._metrics.rules_valid.set(0)
        if version == self._rejected and not requested:
            return  # the same bad content seen again (touched, copied back): said once already
        self._rejected = version
        self._metrics.rules_reloads.labels(outcome=INVALID).inc()
        log.error("rules file %s is invalid, keeping version %s: %s", self.path, self._version, problem)
