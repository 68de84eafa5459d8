"""A checkpoint's class names made meaningful: ``negative``/``positive`` for binary models, their own names otherwise."""

from __future__ import annotations

from typing import Sequence

from worker.errors import ModelLoadError

KOREAN_LABELS = {"positive": "긍정", "negative": "부정"}
# Names that say which class they are; generic names (0/1, LABEL_0/LABEL_1) say nothing.
_NEGATIVE_NAMES = {"neg", "negative", "부정"}
_POSITIVE_NAMES = {"pos", "positive", "긍정"}


def _meaning(name: str) -> str | None:
    lowered = name.strip().lower()
    if lowered in _POSITIVE_NAMES:
        return "positive"
    if lowered in _NEGATIVE_NAMES:
        return "negative"
    return None


def resolve_labels(
    id2label: dict[int, str], positive_index: int | None = None, override: Sequence[str] | None = None,
    multi_label: bool = False,
) -> list[str]:
    """Label names in class order.

    Binary checkpoints name their classes ``0``/``1``, ``LABEL_0``/``LABEL_1``,
    ``Neg``/``Pos`` and so on; all become ``negative``/``positive``. Names that say
    which is which (``Neg``/``Pos``) are believed; otherwise class 1 is positive.
    ``positive_index``, when set, overrides both. Models with more classes keep
    their own names, and so do multi-label models (two categories such as hate/spam are not a
    negative/positive pair).
    """
    count = len(id2label)
    if override:
        if len(override) != count:
            raise ModelLoadError("labels", f"WORKER_LABELS names {len(override)} labels, the model has {count}")
        return list(override)
    names = [str(id2label[i]) for i in range(count)]
    if multi_label and positive_index is not None:
        raise ModelLoadError("labels", "WORKER_POSITIVE_INDEX is for binary single-label models; this model is multi-label")
    if count != 2 or multi_label:
        return names
    if positive_index is None:
        meanings = [_meaning(n) for n in names]
        if sorted(m or "" for m in meanings) == ["negative", "positive"]:
            return meanings  # type: ignore[return-value]
        positive_index = 1
    if positive_index not in (0, 1):
        raise ModelLoadError("labels", f"WORKER_POSITIVE_INDEX must be 0 or 1 for a binary model, not {positive_index}")
    return ["positive" if i == positive_index else "negative" for i in range(2)]


def nsmc_positive_index(labels: list[str]) -> int | None:
    """Where NSMC's label 1 sits in the model's classes, for positive/negative models; None for others."""
    return labels.index("positive") if sorted(labels) == ["negative", "positive"] else None
