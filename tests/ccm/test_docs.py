"""The README and docs/ are read by people who have only this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)[^)]*\)")
PATH_IN_CODE = re.compile(r"`((?:\.\./|/)[\w./-]+\.(?:md|py|txt|json))`")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_hold_the_architecture_and_the_conventions():
    assert (ROOT / "docs" / "architecture.md").is_file()
    assert (ROOT / "docs" / "conventions.md").is_file()
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md" in readme


def test_no_page_sends_readers_outside_the_repository():
    for page in _pages():
        text = page.read_text()
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{page.name} links outside: {target}"
            assert resolved.exists(), f"{page.name} links to a missing file: {target}"
        outside = PATH_IN_CODE.findall(text)
        assert not outside, f"{page.name} names files outside the repository: {outside}"
