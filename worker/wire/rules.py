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


# The key of WORKER_LABEL_THRESHOLDS that sets the threshold of every category it does not name.
DEFAULT_KEY = "default"


def split_thresholds(spec: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """A thresholds object (``{"hate": 0.7, "default": 0.6}``) as (per-category thresholds, default threshold)."""
    thresholds = {c: float(t) for c, t in spec.items() if c != DEFAULT_KEY}
    return thresholds, float(spec.get(DEFAULT_KEY, DEFAULT_THRESHOLD))


def check_thresholds(spec: Mapping[str, float], model_labels: Sequence[str], multi_label: bool) -> None:
    """Thresholds (the object, ``default`` included) that could never apply, as a ValueError naming the problem.

    Checked once the model is loaded: a category the model does not have, or any threshold for a
    single-label model (its result has no ``labels`` for them to decide).
    """
    if spec and not multi_label:
        raise ValueError("thresholds per category apply to multi-label models; this model is single-label "
                         "(WORKER_PROBLEM_TYPE=multi_label scores one with a sigmoid per category)")
    unknown = [c for c in spec if c != DEFAULT_KEY and c not in model_labels]
    if unknown:
        raise ValueError(f"names categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} the model does not have "
                         f"(its labels: {', '.join(model_labels)})")
