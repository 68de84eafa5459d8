"""Regenerates the configuration table in docs/configuration.md from worker.settings (tests/unit/test_docs.py checks it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.settings import reference_table  # noqa: E402

CONFIGURATION = REPO / "docs" / "configuration.md"
START = "<!-- settings-table:start"
END = "<!-- settings-table:end -->"


def render(page: str) -> str:
    """The page with the text between the markers replaced by the table the settings class generates."""
    pattern = re.compile(re.escape(START) + r"[^\n]*\n.*?" + re.escape(END), re.S)
    head = page[page.index(START):].split("\n", 1)[0]
    return pattern.sub(lambda _: f"{head}\n{reference_table()}\n{END}", page)


if __name__ == "__main__":
    CONFIGURATION.write_text(render(CONFIGURATION.read_text(encoding="utf-8")), encoding="utf-8")
