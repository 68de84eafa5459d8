"""Micro-batching: when a batch closes. No Kafka here.

A batch (a *window* of consumed records, in consumption order) closes at a maximum
number of messages, a maximum number of real tokens, or a maximum wait after its
first message, whichever comes first (see text-embeddings-inference's queue for the
same idea). How a window is cut into padded forward passes is the model side's:
:func:`worker.engines.base.plan_sub_batches`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class Window(Generic[Item]):
    """Consumed items in order; ``tokens`` and ``messages`` count only those to classify."""

    items: list[Item] = field(default_factory=list)
    opened_at: float = 0.0
    messages: int = 0
    tokens: int = 0
    closed_at: float = 0.0


class Batcher(Generic[Item]):
    """Accumulates items into a window until a limit is reached."""

    def __init__(
        self,
        max_messages: int,
        max_tokens: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_messages <= 0 or max_tokens <= 0 or max_wait_s < 0:
            raise ValueError("batch limits must be positive")
        self.max_messages = max_messages
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._window: Window[Item] = Window()

    def __len__(self) -> int:
        return len(self._window.items)

    def add(self, item: Item, tokens: int | None) -> None:
        """Add an item; ``tokens=None`` marks one that rides along without compute (a rejection)."""
        window = self._window
        if not window.items:
            window.opened_at = self._clock()
        window.items.append(item)
        if tokens is not None:
            window.messages += 1
            window.tokens += tokens

    def would_overflow(self, tokens: int) -> bool:
        """True if adding this many tokens would break the token budget of a non-empty window."""
        return self._window.messages > 0 and self._window.tokens + tokens > self.max_tokens

    def is_full(self) -> bool:
        window = self._window
        return window.messages >= self.max_messages or window.tokens >= self.max_tokens

    def time_left(self) -> float:
        """Seconds until the open window must close (inf if it is empty)."""
        if not self._window.items:
            return float("inf")
        return max(0.0, self._window.opened_at + self.max_wait_s - self._clock())

    def is_due(self) -> bool:
        return bool(self._window.items) and (self.is_full() or self.time_left() <= 0.0)

    def take(self) -> Window[Item]:
        window, self._window = self._window, Window()
        window.closed_at = self._clock()
        return window
