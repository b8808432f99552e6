"""An mkdocs hook: the site's guide pages are the README's sections, read at build time.

The README stays the one copy of the text (GitHub shows it; `mkdocs build` splits it): its
introduction (before the first ``## `` heading) is the home page, each ``## `` section is a page
under ``guide/`` with its headings one level up, and links into ``docs/`` are made relative to
the page. A section added to the README is a page on the next build, with no other edit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_FENCE = re.compile(r"^\s*(```|~~~)")
_DOCS_LINK = re.compile(r"\]\(docs/")


def _slug(title: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", title.lower().replace("`", "")).strip("-")
    return "-".join(words.split("-")[:6]) or "section"


def split_readme(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``(introduction, [(slug, title, body), ...])``: the README cut at its ``## `` headings
    (those inside code fences are text, not headings)."""
    intro: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append((line[3:].strip(), []))
            continue
        (sections[-1][1] if sections else intro).append(line)
    pages, seen = [], set()
    for title, body in sections:
        slug = _slug(title)
        while slug in seen:
            slug += "-2"
        seen.add(slug)
        pages.append((slug, title, "\n".join(body)))
    return "\n".join(intro), pages


def _lift_headings(body: str) -> str:
    """``### x`` -> ``## x`` outside code fences: the section's title is the page's ``#``."""
    out, fenced = [], False
    for line in body.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("###"):
            line = line[1:]
        out.append(line)
    return "\n".join(out)


_PAGES: list[tuple[str, str, str]] = []
_INTRO = ""


def on_config(config: Any, **_: Any) -> Any:
    global _INTRO, _PAGES
    readme = Path(config.config_file_path).parent / "README.md"
    _INTRO, _PAGES = split_readme(readme.read_text(encoding="utf-8"))
    guide = [{title.replace("`", ""): f"guide/{slug}.md"} for slug, title, _ in _PAGES]
    config.nav = [
        {"Home": "index.md"},
        {"Guide": guide},
        {"Architecture": "architecture.md"},
        {
            "API reference": [
                {"vitrina": "api/index.md"},
                {"Classify and train": "api/classify.md"},
                {"Embed and search": "api/embed-search.md"},
                {"Faces": "api/faces.md"},
                {"Explain": "api/explain.md"},
                {"Detect": "api/detect.md"},
                {"Serve": "api/service.md"},
            ]
        },
    ]
    return config


def on_files(files: Files, config: Any, **_: Any) -> Files:
    home = _DOCS_LINK.sub("](", _INTRO)
    files.append(File.generated(config, "index.md", content=home))
    for slug, title, body in _PAGES:
        text = f"# {title}\n" + _DOCS_LINK.sub("](../", _lift_headings(body))
        files.append(File.generated(config, f"guide/{slug}.md", content=text))
    return files
