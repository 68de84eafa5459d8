"""A checkpoint's class names made meaningful (worker.engines.labels)."""

import pytest

from worker.engines.labels import resolve_labels
from worker.errors import ModelLoadError


@pytest.mark.parametrize(
    "id2label,expected",
    [
        ({0: "0", 1: "1"}, ["negative", "positive"]),
        ({0: "LABEL_0", 1: "LABEL_1"}, ["negative", "positive"]),
        ({0: "Neg", 1: "Pos"}, ["negative", "positive"]),
        ({0: "Pos", 1: "Neg"}, ["positive", "negative"]),
        ({0: "negative", 1: "positive"}, ["negative", "positive"]),
        ({0: "부정", 1: "긍정"}, ["negative", "positive"]),
        ({0: "bad", 1: "good"}, ["negative", "positive"]),
    ],
)
def test_binary_label_names_are_normalised(id2label, expected):
    assert resolve_labels(id2label) == expected


def test_positive_index_override():
    assert resolve_labels({0: "LABEL_0", 1: "LABEL_1"}, positive_index=0) == ["positive", "negative"]
    assert resolve_labels({0: "Neg", 1: "Pos"}, positive_index=0) == ["positive", "negative"]


def test_multiclass_keeps_names_and_override_checks_count():
    labels = {0: "anger", 1: "joy", 2: "neutral"}
    assert resolve_labels(labels) == ["anger", "joy", "neutral"]
    assert resolve_labels(labels, override=["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ModelLoadError):
        resolve_labels(labels, override=["a", "b"])
