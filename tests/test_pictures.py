"""The pictures of vitrina.report.pictures, opened as a person would open them: each HTML page in
headless Chromium (Debian's ``chromium``; the page tests skip without it, saying so), each PNG
with Pillow, checking what they show (counts, order, bins, labels), not only that they exist."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COLORS, make_dataset, make_image, run_cli
from pictures_check import (
    Page,
    all_images_decoded,
    assert_png_shows_something,
    browser,  # noqa: F401  (a fixture)
    needs_chromium,
    sections,
    table_counts,
)

# --------------------------------------------------------------------------- sort


def _sort_photos(tmp_path: Path) -> Path:
    """Three of each colour, two muddy ones the model cannot be sure of, and a broken file."""
    d = tmp_path / "photos"
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(3):
            make_image(d / f"{name}-new-{i}.png", rgb, seed=7000 + ci * 10 + i)
    make_image(d / "muddy-0.png", (120, 110, 120), seed=1)
    make_image(d / "muddy-1.png", (110, 120, 110), seed=2)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def _threshold(toy_run: Path, photos: Path) -> float:
    """A --min-confidence that sends some readable photos to unsure/ and keeps others."""
    from vitrina.classify import load

    clf = load(toy_run)
    conf = sorted(
        p.confidence for p in clf.predict(sorted(photos.glob("*.png")), device="cpu") if not p.error
    )
    return float((conf[len(conf) // 3] + conf[len(conf) // 3 + 1]) / 2)


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@needs_chromium
def test_sort_report_shows_every_folder_least_confident_first(
    toy_run: Path, tmp_path: Path, capsys, browser
) -> None:
    photos = _sort_photos(tmp_path)
    threshold = _threshold(toy_run, photos)
    out = tmp_path / "sorted"
    report, sheet = tmp_path / "pages" / "report.html", tmp_path / "pages" / "sheet.png"
    code, _, err = run_cli(
        capsys, "sort", photos, "--model", toy_run, "--out", out, "--backend", "eager",
        "--device", "cpu", "--min-confidence", threshold, "--report", report, "--sheet", sheet,
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {report}" in err.replace("\n", "")
    rows = _manifest(out)
    expected: dict[str, list[float]] = {}
    for r in rows:
        expected.setdefault(Path(r["destination"]).parent.name, []).append(float(r["confidence"]))
    assert "unsure" in expected and "unreadable" in expected and len(expected) >= 3

    with Page(browser, report) as page:
        all_images_decoded(page)
        assert table_counts(page) == {f: len(v) for f, v in expected.items()}
        shown = sections(page)
        folders = [s["folder"] for s in shown]
        # class folders by name, then the two bins a person must look at, set apart
        assert folders[-2:] == ["unsure", "unreadable"]
        assert folders[:-2] == sorted(f for f in expected if f not in ("unsure", "unreadable"))
        for s in shown:
            assert s["count"] == len(expected[s["folder"]])
            assert s["alarm"] == (s["folder"] in ("unsure", "unreadable"))
            if s["folder"] == "unreadable":
                assert any("broken.jpg" in c for c in s["captions"])
                continue
            ranks = [float(r) for r in s["ranks"]]
            assert ranks == sorted(ranks)  # least confident first
            assert ranks[0] == pytest.approx(min(expected[s["folder"]]), abs=1e-4)
            assert len(ranks) == len(expected[s["folder"]])
        unsure = next(s for s in shown if s["folder"] == "unsure")
        assert all(float(r) < threshold for r in unsure["ranks"])
        assert "muddy" in page.inner_text("body") or len(unsure["ranks"]) >= 1

    a = assert_png_shows_something(sheet)
    assert a.shape[0] > 4 * 112  # a row per folder: at least five rows of thumbnails


@needs_chromium
def test_sort_report_of_a_dry_run_shows_the_plan(
    toy_run: Path, tmp_path: Path, photos: Path, browser
) -> None:
    from vitrina.classify.sort import sort_folder

    out = tmp_path / "sorted"
    summary = sort_folder(
        photos, toy_run, out, dry_run=True, device="cpu", report=tmp_path / "plan.html"
    )
    assert not out.exists()  # a dry run changes nothing: the page lies elsewhere
    with Page(browser, tmp_path / "plan.html") as page:
        all_images_decoded(page)
        assert "would be placed" in page.title()
        assert table_counts(page) == summary.counts
        assert any("broken.jpg" in c for s in sections(page) for c in s["captions"])


def test_the_report_of_a_rerun_shows_earlier_runs_too(toy_run: Path, tmp_path: Path) -> None:
    from vitrina.classify.sort import sort_folder

    photos = _sort_photos(tmp_path)
    out = tmp_path / "sorted"
    first = sort_folder(photos, toy_run, out, device="cpu")
    again = sort_folder(photos, toy_run, out, device="cpu", report=tmp_path / "r.html")
    assert again.skipped_done == first.placed and again.placed == 0
    text = (tmp_path / "r.html").read_text()
    for folder, n in first.counts.items():
        assert f'data-folder="{folder}" data-count="{n}"' in text
    assert 'src="http' not in text and "<script" not in text


# --------------------------------------------------------------------------- evaluate


@needs_chromium
def test_evaluate_draws_confusion_bars_and_the_most_confident_mistakes(
    toy_run: Path, tmp_path: Path, capsys, browser
) -> None:
    # A test set the toy model gets partly wrong: greens and blues filed under red too.
    data = make_dataset(tmp_path / "test", per_class=3)
    for i, rgb in enumerate(((30, 200, 40), (30, 40, 220))):
        make_image(data / "red" / f"not-red-{i}.png", rgb, seed=900 + i)
    pictures = tmp_path / "eval"
    code, _, err = run_cli(
        capsys, "evaluate", toy_run, data, "--out", pictures, "--backend", "eager",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    from vitrina.classify import load

    rep = load(toy_run).evaluate(data, device="cpu")
    assert len(rep.mistakes) >= 2
    assert {Path(m[0]).name for m in rep.mistakes} >= {"not-red-0.png", "not-red-1.png"}
    for m in rep.mistakes:
        assert m[1] != m[2]

    confusion = assert_png_shows_something(pictures / "confusion.png")
    assert confusion.shape[0] > 200
    assert_png_shows_something(pictures / "per_class.png")
    mistakes = assert_png_shows_something(pictures / "mistakes.png")
    # each mistake is framed red: a red frame's pixels are on the sheet
    red = (mistakes[..., 0] > 190) & (mistakes[..., 1] < 60) & (mistakes[..., 2] < 60)
    assert red.sum() > 4 * 128

    with Page(browser, pictures / "index.html") as page:
        all_images_decoded(page)
        shown = sections(page)
        wrong = next(s for s in shown if s["folder"] == "mistakes")
        assert wrong["count"] == len(rep.mistakes)
        ranks = [float(r) for r in wrong["ranks"]]
        assert ranks == sorted(ranks, reverse=True)  # the most confident first
        assert ranks[0] == pytest.approx(max(m[3] for m in rep.mistakes), abs=1e-4)
        first = wrong["captions"][0]
        top = max(rep.mistakes, key=lambda m: m[3])
        assert f"true {rep.classes[top[1]]}" in first
        assert f"predicted {rep.classes[top[2]]}" in first
        assert sum(s["plots"] for s in shown) == 2  # the bars and the confusion matrix
        assert f"accuracy {rep.accuracy:.1%}" in page.inner_text("body")


# --------------------------------------------------------------------------- data inspect


@needs_chromium
def test_inspect_draws_samples_duplicates_and_sizes(tmp_path: Path, capsys, browser) -> None:
    data = make_dataset(tmp_path / "data", per_class=10)
    for i, size in enumerate((64, 96, 200)):
        make_image(data / "blue" / f"big-{i}.png", COLORS["blue"], size=size, seed=50 + i)
    shutil.copy(data / "red" / "red-01.png", data / "green" / "copy-of-red.png")
    shutil.copy(data / "red" / "red-01.png", data / "red" / "again.png")
    (data / "green" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "look"
    code, _, err = run_cli(capsys, "data", "inspect", data, "--out", out)
    assert code == 0, err

    samples = assert_png_shows_something(out / "samples.png")
    assert samples.shape[0] > 3 * 112  # a row per class
    assert_png_shows_something(out / "duplicates.png")
    assert_png_shows_something(out / "sizes.png")

    with Page(browser, out / "index.html") as page:
        all_images_decoded(page)
        assert table_counts(page) == {"blue": 13, "green": 12, "red": 11}
        shown = {s["folder"]: s for s in sections(page) if s["folder"]}
        assert all(len(shown[c]["captions"]) == 8 for c in ("blue", "green", "red"))
        group = shown["duplicates-1"]
        assert group["count"] == 3
        names = sorted(c.splitlines()[0] for c in group["captions"])
        assert names == ["again.png", "copy-of-red.png", "red-01.png"]
        text = page.inner_text("body")
        assert "1 unreadable" in text and "broken.jpg" in text
