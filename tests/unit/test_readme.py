"""The README's configuration reference is generated from the settings class and must match it."""

import re
from pathlib import Path

from worker.settings import Settings, reference_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_settings_table_matches_settings_class():
    text = README.read_text(encoding="utf-8")
    assert reference_table() in text, "README configuration table is stale: run `python scripts/update_readme.py`"


def test_every_setting_documented_and_no_stale_names():
    text = README.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"WORKER_{name.upper()}" in text
    known = {f"WORKER_{n.upper()}" for n in Settings.model_fields}
    for mentioned in set(re.findall(r"WORKER_[A-Z_]+[A-Z]", text)):
        assert mentioned in known or mentioned.startswith(("WORKER_KAFKA_",)), f"README names unknown {mentioned}"


def test_readme_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make run" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
