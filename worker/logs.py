"""Logging setup: one line per event on stderr, as JSON or as text, with an event's ``fields`` appended.

Every part of the worker logs through ``logging`` with ``extra={"fields": {...}}``; only
:func:`configure_logging` (called by ``worker.cli`` and by the engines' preparing child process)
decides what those lines look like.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from worker.throttle import ThrottleFilter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        return f"{line} {json.dumps(fields, ensure_ascii=False, default=str)}" if fields else line


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("transformers", "httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # librdkafka repeats a failing connection's error on every retry: say each kind once per 10 s.
    librdkafka = logging.getLogger("librdkafka")
    librdkafka.filters[:] = [ThrottleFilter(10.0)]
