"""Labelled texts from files: NSMC-format TSV (``id``, ``document``, ``label``), as ``worker eval``, the engines'
calibration set and the benchmarks read them, and multi-label data (a set of categories per text) as JSONL or
TSV (``id``, ``document``, ``labels``) for ``worker eval``. No model, no Kafka."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from worker.errors import WorkerError

MULTI_LABEL_HEADER = ["id", "document", "labels"]
NSMC_HEADER = ["id", "document", "label"]


class DatasetError(WorkerError, ValueError):
    """A labelled file that cannot be read; the message names the file and, where there is one, the line."""


def read_nsmc_rows(path: Path, limit: int | None = None) -> list[tuple[str, str, int]]:
    """(id, document, label) rows; NSMC has literal quotes, so no CSV quoting. Empty documents are skipped."""
    rows: list[tuple[str, str, int]] = []
    with _open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        if header[:3] != NSMC_HEADER:
            raise DatasetError(f"{path}: expected header id, document, label; found {header}")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 3 or row[2] not in ("0", "1"):
                raise DatasetError(f"{path}:{line_no}: expected 3 columns with label 0 or 1, got {row!r}")
            if row[1].strip():
                rows.append((row[0], row[1], int(row[2])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def read_nsmc(path: Path, limit: int | None = None) -> list[tuple[str, int]]:
    """(document, label) rows of :func:`read_nsmc_rows`."""
    return [(document, label) for _, document, label in read_nsmc_rows(path, limit)]


@dataclass(frozen=True)
class LabelledText:
    """One text of multi-label data: the categories it truly belongs to (empty: a clean text) and where it was."""

    line: int
    text: str
    categories: frozenset[str]


def is_multi_label_file(path: Path) -> bool:
    """JSONL or a TSV whose header is ``id document labels``; an NSMC TSV (``label``) is not."""
    return _is_jsonl(path) or _first_line(path).split("\t")[:3] == MULTI_LABEL_HEADER


def _is_jsonl(path: Path) -> bool:
    """A ``.jsonl`` file, or one whose first line is a JSON object (a TSV's is its header)."""
    return path.suffix.lower() == ".jsonl" or _first_line(path).lstrip().startswith("{")


def _first_line(path: Path) -> str:
    with _open(path) as handle:
        try:
            return handle.readline().rstrip("\r\n")
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None


def read_multi_label(path: Path, limit: int | None = None) -> list[LabelledText]:
    """Multi-label texts from JSONL or TSV (docs/moderation.md, "Multi-label models"); empty texts are skipped."""
    reader = _read_jsonl if _is_jsonl(path) else _read_multi_label_tsv
    rows: list[LabelledText] = []
    try:
        for row in reader(path):
            if row.text.strip():
                rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    return rows


def _read_jsonl(path: Path) -> Iterator[LabelledText]:
    """One JSON object per line: {"text": "...", "labels": ["insult", "spam"]}; blank lines are skipped."""
    with _open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{line_no}: not JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(value, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object with \"text\" and \"labels\"")
            text, labels = value.get("text"), value.get("labels")
            if not isinstance(text, str):
                raise DatasetError(f"{path}:{line_no}: \"text\" must be a string")
            if not isinstance(labels, list) or not all(isinstance(c, str) and c.strip() for c in labels):
                raise DatasetError(
                    f"{path}:{line_no}: \"labels\" must be a list of category names ([] for a clean text)"
                )
            yield LabelledText(line_no, text, frozenset(c.strip() for c in labels))


def _read_multi_label_tsv(path: Path) -> Iterator[LabelledText]:
    """Header ``id document labels``; labels comma-separated, empty for a clean text; no CSV quoting (as NSMC)."""
    with _open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or header[:3] != MULTI_LABEL_HEADER:
            raise DatasetError(f"{path}:1: expected the header id, document, labels (tab separated); found {header}")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 3:
                raise DatasetError(
                    f"{path}:{line_no}: expected 3 tab-separated columns (id, document, labels), got {len(row)}"
                )
            parts = [c.strip() for c in row[2].split(",")]
            if row[2].strip() and not all(parts):
                raise DatasetError(f"{path}:{line_no}: empty category name in {row[2]!r}")
            yield LabelledText(line_no, row[1], frozenset(c for c in parts if c))


def _open(path: Path, newline: str | None = None) -> TextIO:
    """The file as UTF-8 text; a missing or unreadable file is a one-line DatasetError."""
    try:
        return open(path, encoding="utf-8", newline=newline)
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror or exc}") from None
