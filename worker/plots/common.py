"""What the charts of ``worker eval --plots`` share: matplotlib (an optional dependency, the ``plots`` extra),
sizes, colours and the calibration bars."""

from __future__ import annotations

from typing import Any

from worker.errors import WorkerError

DPI = 110
SIZE = (7.0, 4.6)
NEGATIVE, POSITIVE, GREY, REVIEW = "#c0392b", "#2471a3", "#7f8c8d", "#e67e22"


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise WorkerError(
            "worker eval --plots needs matplotlib: pip install 'koelectra-worker[plots]' (or matplotlib)"
        ) from exc
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def bin_bars(axes: Any, bins: list[dict[str, Any]], heights: list[float], color: str, **style: Any) -> None:
    """One bar per calibration bin, spanning the bin."""
    lefts = [b["lower"] for b in bins]
    widths = [b["upper"] - b["lower"] for b in bins]
    axes.bar(lefts, heights, width=widths, align="edge", color=color, edgecolor="white", **style)
