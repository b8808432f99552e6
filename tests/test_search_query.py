"""Querying an index with photos (vitrina.search.query), drawing the results, explaining the
matches (vitrina.explain.similarity.explain_matches) and the duplicates' sheet -- as API."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import COLORS, make_dataset, make_image
from vitrina.errors import VitrinaError
from vitrina.search import Index
from vitrina.search.query import search_photos, write_result_pages

FAST = {"backend": "eager", "device": "cpu"}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, toy_run: Path) -> Path:
    root = tmp_path_factory.mktemp("query")
    data = make_dataset(root / "photos", per_class=3)
    Index.build(data, root / "photos.index", model=str(toy_run), **FAST).close()
    return root / "photos.index"


@pytest.fixture
def queries(tmp_path: Path) -> list[Path]:
    blue = make_image(tmp_path / "q" / "blue-q.png", COLORS["blue"], seed=99)
    bad = tmp_path / "q" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    return [blue, bad]


def test_search_photos_answers_each_query_and_keeps_the_bad_one(index: Path, queries) -> None:
    seen = []
    run = search_photos(index, queries, k=3, on_progress=lambda d, n: seen.append((d, n)), **FAST)
    good, bad = run.results
    assert [h.label for h in good.hits] == ["blue"] * 3 and [h.rank for h in good.hits] == [1, 2, 3]
    assert bad.error and "bad.jpg" in bad.error and bad.hits == []
    assert run.errors == [bad.error]
    assert run.index.metric == "cosine" and run.index.recovered is None
    assert run.embedder.fingerprint == run.index.fingerprint  # what embedded the queries
    assert seen and seen[-1][0] == seen[-1][1]


def test_search_photos_checks_metric_model_and_k(index: Path, queries, toy_run: Path) -> None:
    with pytest.raises(VitrinaError, match="built with the cosine metric"):
        search_photos(index, queries[:1], metric="euclidean", **FAST)
    with pytest.raises(VitrinaError, match="-k must be at least 1, got 0"):
        search_photos(index, queries[:1], k=0, **FAST)
    # naming the index's own model is a check that passes, and that model embeds the queries
    run = search_photos(index, queries[:1], k=1, model=str(toy_run), metric="cosine", **FAST)
    assert run.results[0].hits[0].label == "blue"


def test_write_result_pages_draws_a_row_per_answered_query(
    index: Path, queries, tmp_path: Path
) -> None:
    run = search_photos(index, queries, k=3, **FAST)
    written = write_result_pages(run, sheet=tmp_path / "s.png", html=tmp_path / "r.html")
    assert written == {"sheet": tmp_path / "s.png", "html": tmp_path / "r.html"}
    with Image.open(written["sheet"]) as im:
        assert im.width >= 4 * 128 and im.height >= 128  # query + 3 results, one row
    page = written["html"].read_text()
    assert page.count("<img") == 4 and "bad.jpg" in page and "http://" not in page
    assert write_result_pages(run) == {}


def test_explain_matches_draws_the_top_hits_of_each_readable_query(
    index: Path, queries, tmp_path: Path
) -> None:
    from vitrina.explain.similarity import explain_matches

    run = search_photos(index, queries, k=3, **FAST)
    seen = []
    why = tmp_path / "why"
    figures = explain_matches(
        run.embedder.model, run.results, why, top=2, on_progress=lambda d, n: seen.append((d, n))
    )
    assert [f.parent.name for f in figures] == ["blue-q", "blue-q"]  # the bad query: skipped
    assert [f.name[:8] for f in figures] == ["rank-01-", "rank-02-"]
    assert seen == [(1, 2), (2, 2)]
    with Image.open(figures[0]) as im:
        assert im.width > im.height  # query and result side by side
    assert explain_matches(run.embedder.model, run.results, why, top=0) == []


def test_dedupe_sheet_has_a_row_per_group(tmp_path: Path, toy_run: Path) -> None:
    import shutil

    from vitrina.search.dedupe import find_duplicates, write_sheet

    photos = tmp_path / "photos"
    a = make_image(photos / "a.png", COLORS["red"], seed=1)
    shutil.copy(a, photos / "a-copy.png")
    b = make_image(photos / "b.png", COLORS["green"], seed=2)
    shutil.copy(b, photos / "b-copy.png")
    make_image(photos / "c.png", COLORS["blue"], seed=3)
    report = find_duplicates(photos, model=str(toy_run), threshold=0.999, **FAST)
    assert len(report.groups) == 2
    sheet = write_sheet(report, tmp_path / "dupes.png")
    with Image.open(sheet) as im:
        assert im.height >= 2 * 96  # two rows of thumbnails
