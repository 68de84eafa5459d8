"""The moderation rules in force: routes and per-category thresholds, as one immutable value.

The rules decide where a result goes (routes) and which categories of a multi-label model count as
flagged (thresholds). They are one value so a reload (``WORKER_ROUTES_FILE``) swaps them between two
windows at once: a window is rendered under one version of the rules, never half of each, and every
result names the version that routed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

from worker.wire.routing import Route
from worker.wire.types import Prediction

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Rules:
    routes: tuple[Route, ...] = ()
    # Per-category thresholds of a multi-label model; a category not named here uses default_threshold.
    thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    default_threshold: float = DEFAULT_THRESHOLD
    # Which rules routed a result (the worker.rules.version header): "env" for rules from the
    # environment, a content hash for rules from a file.
    version: str = "env"

    def threshold(self, category: str) -> float:
        return self.thresholds.get(category, self.default_threshold)

    def flagged(self, probabilities: Mapping[str, float]) -> tuple[str, ...]:
        """The categories at or above their threshold, most probable first."""
        hits = [c for c, p in probabilities.items() if p >= self.threshold(c)]
        return tuple(sorted(hits, key=lambda c: -probabilities[c]))

    def matching(self, prediction: Prediction) -> list[Route]:
        """The routes a result is copied to, in rule order.

        Single-label: a route matches the winning label and score (as always). Multi-label: a route
        matches when any category it lists (any category when it lists none) has its own probability
        in the route's band, so a comment that is both insult and spam reaches both routes.
        """
        if not prediction.multi_label:
            return [r for r in self.routes if r.matches(prediction.label, prediction.score)]
        return [
            r for r in self.routes
            if any(r.matches(c, p) for c, p in prediction.probabilities.items())
        ]


def rules_from(routes: Sequence[Route], thresholds: Mapping[str, float] | None = None,
               default_threshold: float = DEFAULT_THRESHOLD, version: str = "env") -> Rules:
    return Rules(tuple(routes), MappingProxyType(dict(thresholds or {})), default_threshold, version)
