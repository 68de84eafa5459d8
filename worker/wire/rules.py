"""The moderation rules in force: routes and per-category thresholds, as one immutable value.

The rules decide where a result goes (routes) and which categories of a multi-label model count as
flagged (thresholds). They are one value so a reload (``WORKER_ROUTES_FILE``) swaps them between two
windows at once: a window is rendered under one version of the rules, never half of each, and every
result names the version that routed it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Annotated, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.wire.routing import ROUTE_HEADER, Route, check_labels, check_routes
from worker.wire.sizes import header_size
from worker.wire.types import Prediction

DEFAULT_THRESHOLD = 0.5
RULES_VERSION_HEADER = "worker.rules.version"


@dataclass(frozen=True)
class Rules:
    routes: tuple[Route, ...] = ()
    # Per-category thresholds of a multi-label model; a category not named here uses default_threshold.
    thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    default_threshold: float = DEFAULT_THRESHOLD
    # Which rules routed a result (the worker.rules.version header): "env" for rules from the
    # environment, a content hash for rules from a file.
    version: str = "env"

    # Read for every record rendered; computed once per version of the rules (the value is immutable).
    @cached_property
    def version_header(self) -> tuple[str, bytes]:
        """The header every record rendered under these rules carries."""
        return (RULES_VERSION_HEADER, self.version.encode())

    @cached_property
    def route_reserve(self) -> int:
        """Bytes a routed copy's ``worker.route`` header may add: the longest route name's."""
        return max((header_size(ROUTE_HEADER, r.name.encode()) for r in self.routes), default=0)

    @property
    def topics(self) -> tuple[str, ...]:
        """The route topics, each once, in rule order."""
        return tuple(dict.fromkeys(r.topic for r in self.routes))

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


# --- rules from a file (WORKER_ROUTES_FILE) ---

VERSION_HEX_DIGITS = 12


class RulesDocument(BaseModel):
    """``{"routes": [...as WORKER_ROUTES...], "thresholds": {"insult": 0.7}, "default_threshold": 0.5}``"""

    model_config = ConfigDict(extra="forbid")

    routes: list[Route] = Field(default_factory=list)
    thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    default_threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0)


def rules_version(content: bytes) -> str:
    """The version of rules read from a file: the first hex digits of its content's SHA-256."""
    return hashlib.sha256(content).hexdigest()[:VERSION_HEX_DIGITS]


def parse_rules(content: bytes, *, reserved_topics: Sequence[str], model_labels: Sequence[str] | None = None,
                yaml: bool = False) -> Rules:
    """The rules a file holds (JSON, or YAML when ``yaml``), checked as WORKER_ROUTES is.

    Raises ValueError with one line naming the problem: not JSON/YAML, a field out of range, a route
    writing to a reserved topic, a label or category the model does not have (when ``model_labels``
    is given). The version is :func:`rules_version` of ``content``.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None
    data = _load_yaml(text) if yaml else _load_json(text)
    if not isinstance(data, dict):
        raise ValueError(f"must be an object with routes, thresholds and default_threshold, not {type(data).__name__}")
    try:
        document = RulesDocument.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None
    check_routes(document.routes, reserved_topics)
    if model_labels is not None:
        check_labels(document.routes, model_labels)
        unknown = [c for c in document.thresholds if c not in model_labels]
        if unknown:
            raise ValueError(
                f"thresholds name categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} the model "
                f"does not have (its labels: {', '.join(model_labels)})"
            )
    return rules_from(document.routes, document.thresholds, document.default_threshold, rules_version(content))


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _load_yaml(text: str) -> Any:
    import yaml  # PyYAML comes with transformers; only a .yaml/.yml rules file needs it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError("not valid YAML: " + " ".join(str(exc).split())) from None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.get("loc", ())).lstrip(".")
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
