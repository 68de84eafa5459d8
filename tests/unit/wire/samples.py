"""Records and predictions the wire tests build on."""

from worker.wire.types import InputRecord, Prediction

MODEL = {"id": "m", "revision": "r"}


def rec(value, headers=None, key=b"k1", ts=1_700_000_000_000):
    return InputRecord("in", 2, 41, key, value, headers or [], ts)


def sample_prediction(**changes):
    values = dict(label="positive", score=0.9, probabilities={"negative": 0.1, "positive": 0.9}, truncated=False,
                  tokens=5)
    values.update(changes)
    return Prediction(**values)
