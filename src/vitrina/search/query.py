"""Query an index folder with photos: open it, check what the caller expects of it, embed the
queries with the index's model, and draw the results as a contact sheet or an HTML page.

>>> from vitrina.search.query import search_photos, write_result_pages
>>> run = search_photos("photos.index", ["query.jpg"], k=5)             # doctest: +SKIP
>>> [(h.rank, h.path) for h in run.results[0].hits]                     # doctest: +SKIP
>>> write_result_pages(run, sheet="results.png", html="results.html")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrina.errors import VitrinaError
from vitrina.search.index import Index, QueryResult

__all__ = ["SearchRun", "search_photos", "write_result_pages"]


@dataclass
class SearchRun:
    """The open index, one :class:`QueryResult` per query (``error`` set for an unreadable
    query photo) and the embedder that embedded the queries (the index's own model, loaded
    by the index, unless the caller named one)."""

    index: Index
    results: list[QueryResult]
    embedder: Any

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error]


def search_photos(
    index: str | os.PathLike[str],
    queries: Sequence[str | os.PathLike[str]],
    *,
    k: int = 10,
    model: str | None = None,
    metric: str | None = None,
    backend: str = "auto",
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> SearchRun:
    """The ``k`` photos of ``index`` most like each query photo.

    ``metric`` and ``model`` are checks, not settings: both are fixed when an index is built.
    A ``metric`` other than the index's raises; a ``model`` is loaded and must embed exactly
    like the index's (same fingerprint), else the index refuses it. An interrupted update of
    the index is repaired on opening (``run.index.recovered`` says what was done)."""
    if int(k) < 1:
        raise VitrinaError(f"-k must be at least 1, got {k}")
    idx = Index.open(index, backend=backend, device=device)
    if metric is not None and metric != idx.metric:
        raise VitrinaError(
            f"{index}: built with the {idx.metric} metric; the metric is fixed when an index is "
            f"built (the vectors and structure depend on it): drop --metric, or build another "
            f"index with --metric {metric}"
        )
    embedder = None
    if model is not None:
        from vitrina.embed import Embedder, EmbeddingSpec

        spec = idx.spec
        embedder = Embedder(
            EmbeddingSpec(model, layers=spec.layers if spec else ()), backend=backend, device=device
        )
    results = idx.search(list(queries), k=k, embedder=embedder, on_progress=on_progress)
    return SearchRun(idx, results, embedder or idx.embedder)


def write_result_pages(
    run: SearchRun,
    *,
    sheet: str | os.PathLike[str] | None = None,
    html: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """A contact sheet PNG (a row per query: the query, then its hits with distance and
    label) and/or a self-contained HTML page of the same rows, listing unreadable queries;
    returns the files written, as ``{"sheet": ..., "html": ...}``."""
    from vitrina.report.sheets import SheetRow, Tile, write_contact_sheet, write_html

    dist = "d" if run.index.metric == "cosine" else "L2"
    rows = [
        SheetRow(
            Path(r.query).name,
            [Tile(r.query, "query")]
            + [Tile(h.path, f"#{h.rank} {dist}={h.distance:.3f}\n{h.label}") for h in r.hits],
        )
        for r in run.results
        if not r.error
    ]
    written = {}
    if sheet:
        written["sheet"] = write_contact_sheet(rows, sheet)
    if html:
        written["html"] = write_html(
            rows, html, title=f"search in {run.index.path}", errors=run.errors
        )
    return written
