"""The one percentile of the benchmark, the demo and the tests."""

from __future__ import annotations

from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ``values``, linearly interpolated between the two nearest ranks;
    NaN for no values.

    Interpolated rather than nearest-rank: the benchmark's recorded figures (benchmarks/results/*.json) were
    computed this way, so new runs stay comparable with them, and on the few hundred latencies of a short run
    it does not jump from one sample to the next as q moves (numpy's default, "linear", is the same).
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
