"""Moderation routes: extra topics a result is copied to when its label and score match a rule.

Every rule that matches gets a copy (fan-out, in rule order); the output topic always gets the
result too. A copy carries the same key, headers and value as the main result, plus the header
``worker.route`` naming the rule.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

ROUTE_HEADER = "worker.route"


class Route(BaseModel):
    """``{"name": "flagged", "topic": "comments-flagged", "labels": ["negative"], "min_score": 0.9}``"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    labels: tuple[str, ...] | None = Field(None, min_length=1, description="winning labels that match; any when absent")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="the winning score must be at least this")
    below: float | None = Field(None, gt=0.0, le=1.0, description="...and less than this (no upper bound when absent)")

    @model_validator(mode="after")
    def _check_band(self) -> Route:
        if self.below is not None and self.below <= self.min_score:
            raise ValueError(f"route {self.name!r}: below ({self.below}) must be greater than min_score ({self.min_score})")
        return self

    def matches(self, label: str, score: float) -> bool:
        if self.labels is not None and label not in self.labels:
            return False
        return score >= self.min_score and (self.below is None or score < self.below)


def check_routes(routes: Sequence[Route], reserved_topics: Sequence[str]) -> None:
    """Rules that could never work, as a ValueError naming the problem."""
    names = [r.name for r in routes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"route names must be unique: {', '.join(duplicates)}")
    for route in routes:
        if route.topic in reserved_topics:
            raise ValueError(f"route {route.name!r} writes to {route.topic!r}, which is the input, output or dead-letter topic")


def check_labels(routes: Sequence[Route], model_labels: Sequence[str]) -> None:
    """Labels a rule names that the model never produces (checked once the model is loaded)."""
    for route in routes:
        unknown = [label for label in route.labels or () if label not in model_labels]
        if unknown:
            raise ValueError(
                f"route {route.name!r} names label(s) {', '.join(unknown)} the model does not have "
                f"(its labels: {', '.join(model_labels)})"
            )

