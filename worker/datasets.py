"""Labelled texts from files: NSMC-format TSV (``id``, ``document``, ``label``), as ``worker eval``, the engines'
calibration set and the benchmarks read them. No model, no Kafka."""

from __future__ import annotations

import csv
from pathlib import Path


def read_nsmc_rows(path: Path, limit: int | None = None) -> list[tuple[str, str, int]]:
    """(id, document, label) rows; NSMC has literal quotes, so no CSV quoting. Empty documents are skipped."""
    rows: list[tuple[str, str, int]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:3] != ["id", "document", "label"]:
            raise ValueError(f"{path}: expected header id, document, label; found {header}")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 3 or row[2] not in ("0", "1"):
                raise ValueError(f"{path}:{line_no}: expected 3 columns with label 0 or 1, got {row!r}")
            if row[1].strip():
                rows.append((row[0], row[1], int(row[2])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def read_nsmc(path: Path, limit: int | None = None) -> list[tuple[str, int]]:
    """(document, label) rows of :func:`read_nsmc_rows`."""
    return [(document, label) for _, document, label in read_nsmc_rows(path, limit)]
