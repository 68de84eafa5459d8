"""One exception root for the worker; subclasses carry the data a caller needs."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """Settings are invalid; the message names the variable and the reason."""


class ModelLoadError(WorkerError):
    """The model or tokenizer could not be loaded."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"cannot load model {model!r}: {reason}")
        self.model = model
        self.reason = reason


class KafkaFatalError(WorkerError):
    """librdkafka reported an error the worker cannot recover from."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"fatal Kafka error {code}: {reason}")
        self.code = code
        self.reason = reason
