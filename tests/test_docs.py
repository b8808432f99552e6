"""The documentation site: the README's sections become its pages (docs/hooks/readme_pages.py)
and ``mkdocs build --strict`` passes, offline (``make docs``; CI runs it too)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location(
        "readme_pages", ROOT / "docs/hooks/readme_pages.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_splits_at_its_sections_not_inside_code() -> None:
    pytest.importorskip("mkdocs")
    text = (
        "# vitrina\n\nintro ![x](docs/images/a.png)\n\n## Sort your photos\n\ntext\n"
        "```bash\n## a comment in a shell block, not a heading\n```\n### Detail\n\n"
        "## Sort your photos\n\nagain\n"
    )
    intro, pages = _hook().split_readme(text)
    assert "intro" in intro and "## " not in intro
    assert [(slug, title) for slug, title, _ in pages] == [
        ("sort-your-photos", "Sort your photos"),
        ("sort-your-photos-2", "Sort your photos"),
    ]
    assert "## a comment in a shell block" in pages[0][2]  # the code block is kept whole
    assert "### Detail" in pages[0][2]


def test_every_readme_section_is_a_page() -> None:
    pytest.importorskip("mkdocs")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    _, pages = _hook().split_readme(readme)
    headings = [ln[3:] for ln in readme.splitlines() if ln.startswith("## ")]
    assert [title for _, title, _ in pages] == headings
    assert len({slug for slug, _, _ in pages}) == len(pages)


@pytest.mark.slow  # about 45 s on a loaded 2-core runner
def test_site_builds_strict_and_offline(tmp_path: Path) -> None:
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    guide = site / "guide/sort-your-photos-train-then-sort/index.html"
    assert "unsure" in guide.read_text(encoding="utf-8")
    api = (site / "api/index.html").read_text(encoding="utf-8")
    assert "MissingExtraError" in api and "require" in api  # generated from the docstrings
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert not re.search(r"fonts\.(googleapis|gstatic)\.com", html), page
        assert not re.search(r"<script[^>]+src=\"https?://", html), page
