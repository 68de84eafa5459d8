"""One exception root for the worker; subclasses carry the data a caller needs."""

from __future__ import annotations


# Process exit codes (docs/delivery-guarantees.md, the exit-code table): 2 is settings or model loading, before the loop starts.
EXIT_CLEAN, EXIT_UNFINISHED, EXIT_FATAL = 0, 3, 4


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


class FatalError(WorkerError):
    """The worker cannot go on (exit code 4); ``reason`` is one of :data:`worker.policy.FATAL_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

