"""The README and docs/ pages: the configuration table is generated from the settings class and must match it,
and every relative link points at a file (and heading) that exists."""

import importlib.util
import re
from pathlib import Path

from worker.settings import Settings, reference_table

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)


def _update_docs():
    spec = importlib.util.spec_from_file_location("update_docs", REPO / "scripts" / "update_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(text: str) -> str:
    """The page without code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_settings_table_matches_settings_class():
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert reference_table() in text, "docs/configuration.md table is stale: run `python scripts/update_docs.py`"
    assert _update_docs().render(text) == text, "docs/configuration.md table is stale: run `python scripts/update_docs.py`"


def test_every_setting_documented_and_no_stale_names():
    text = CONFIGURATION.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"WORKER_{name.upper()}" in text
    known = {f"WORKER_{n.upper()}" for n in Settings.model_fields}
    # Variables of the compose file itself (image names), not worker settings.
    known |= set(re.findall(r"\$\{(WORKER_[A-Z_]+)", (REPO / "docker-compose.yml").read_text(encoding="utf-8")))
    for page in PAGES:
        for mentioned in set(re.findall(r"WORKER_[A-Z_]+[A-Z]", page.read_text(encoding="utf-8"))):
            assert mentioned in known or mentioned.startswith(("WORKER_KAFKA_", "WORKER_SCHEMA_REGISTRY_")), f"{page.name} names unknown {mentioned}"


def test_readme_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make run" in text and "make test" in text
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_relative_links_point_at_existing_files_and_headings():
    broken = []
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
