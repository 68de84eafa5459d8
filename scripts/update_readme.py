"""Regenerates the README's configuration table from worker.settings (tests/unit/test_readme.py checks it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.settings import reference_table  # noqa: E402

START = "<!-- settings-table:start"
END = "<!-- settings-table:end -->"


def render(readme: str) -> str:
    pattern = re.compile(re.escape(START) + r"[^\n]*\n.*?" + re.escape(END), re.S)
    head = readme[readme.index(START):].split("\n", 1)[0]
    return pattern.sub(lambda _: f"{head}\n{reference_table()}\n{END}", readme)


if __name__ == "__main__":
    path = REPO / "README.md"
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
