"""The calibration texts that ship with the package (NSMC rows, CC0; see worker/data/README.md)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

AGREEMENT_ROWS = 1000  # timed and checked against the reference; the rest calibrates int8 statistics


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, int], ...]:
    from worker.datasets import read_nsmc

    with resources.as_file(resources.files("worker") / "data" / "calibration.tsv") as path:
        return tuple(read_nsmc(Path(path)))


def agreement_rows() -> list[tuple[str, int]]:
    """(text, NSMC label) pairs the engines are timed on and compared with the reference."""
    return list(_rows()[:AGREEMENT_ROWS])


def statistics_texts() -> list[str]:
    """Texts for quantization statistics, disjoint from :func:`agreement_rows`."""
    return [text for text, _ in _rows()[AGREEMENT_ROWS:]]
