"""Helpers of the picture tests: open an HTML page in headless Chromium (Debian's ``chromium``,
never a downloaded build; without it the page tests skip, saying so) and read what it shows;
open a PNG and check that it shows something."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)",
)


def chromium() -> Iterator:
    """Headless Chromium for a module's ``browser`` fixture (``yield from chromium()``)."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


class Page:
    """A page opened from disk in a fresh tab, recording every request it makes."""

    def __init__(self, browser, path: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 1400})
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri())

    def __enter__(self):
        return self.page

    def __exit__(self, *exc) -> None:
        # Self-contained: nothing but the page itself and its data: URIs was asked for.
        fetched = [u for u in self.requests if not u.startswith(("data:", "file:"))]
        files = {u for u in self.requests if u.startswith("file:")}
        self.context.close()
        assert not fetched, fetched
        assert len(files) == 1, files


def all_images_decoded(page) -> None:
    """Every <img> on the page is a picture the browser decoded (no broken image icons)."""
    sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert sizes
    assert all(ok and w > 0 for ok, w in sizes), sizes


def sections(page) -> list[dict]:
    """Each section of a page: its folder, count, and the ranks and captions of its tiles."""
    return page.eval_on_selector_all(
        "section",
        """els => els.map(s => ({
            folder: s.dataset.folder || null,
            count: s.dataset.count === undefined ? null : Number(s.dataset.count),
            alarm: s.classList.contains('alarm'),
            ranks: [...s.querySelectorAll('figure')].map(f => f.dataset.rank),
            captions: [...s.querySelectorAll('figcaption')].map(c => c.innerText),
            plots: s.querySelectorAll('img.plot').length,
        }))""",
    )


def table_counts(page) -> dict[str, int]:
    rows = page.eval_on_selector_all(
        "table.counts tr[data-folder]",
        "els => els.map(r => [r.dataset.folder, Number(r.querySelector('td.n').innerText)])",
    )
    return dict(rows)


def assert_png_shows_something(path: Path, *, min_size: tuple[int, int] = (200, 100)) -> np.ndarray:
    """A PNG that Pillow opens, of a useful size, neither blank nor one flat colour."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1], im.size
        a = np.asarray(im.convert("RGB")).astype(np.int16)
    assert a.std() > 10, f"{path} looks blank"
    not_white = (a < 235).any(axis=2).mean()
    assert not_white > 0.01, f"{path}: {not_white:.2%} of the pixels are not white"
    return a
