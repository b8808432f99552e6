"""The pictures of vitrina.report.pictures, opened as a person would open them: each HTML page in
headless Chromium (Debian's ``chromium``; the page tests skip without it, saying so), each PNG
with Pillow, checking what they show (counts, order, bins, labels), not only that they exist."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_dataset, make_image, run_cli
from pictures_check import (
    Page,
    all_images_decoded,
    assert_png_shows_something,
    chromium,
    needs_chromium,
    sections,
    table_counts,
)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    yield from chromium()


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


# --------------------------------------------------------------------------- live curves


class _Watch:
    """A training callback after the resume point: what plots/curves.png shows at each epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "plots" / "curves.png"
        self.seen: list[bytes] = []

    def on_fit_start(self, state) -> None: ...

    def on_epoch_start(self, state) -> None: ...

    def on_epoch_end(self, state, record) -> None:
        assert self.path.is_file(), f"no curves after epoch {record['epoch']}"
        assert_png_shows_something(self.path)
        self.seen.append(self.path.read_bytes())
        leftovers = [p for p in self.path.parent.iterdir() if p.name != "curves.png"]
        assert not leftovers, leftovers  # written atomically: no temporary files left behind

    def on_fit_end(self, state) -> None: ...


def _watch(run_dir: Path):
    from vitrina.training import Callback

    class Watch(_Watch, Callback):
        pass

    return Watch(run_dir)


def test_classifier_curves_are_redrawn_after_every_epoch(tmp_path: Path) -> None:
    from conftest import toy_config
    from vitrina.training import train_classifier

    data = make_dataset(tmp_path / "data", per_class=4)
    watch = _watch(tmp_path / "run")
    train_classifier(
        toy_config(data, tmp_path / "run", epochs=3), progress=False, extra_callbacks=[watch]
    )
    assert len(watch.seen) == 3
    assert len(set(watch.seen)) == 3  # a new picture each epoch, not the same one again


def test_embedding_curves_are_redrawn_after_every_epoch(tmp_path: Path) -> None:
    from test_train_embedding import cfg, make_identities
    from vitrina.training.embedding import train_embedding

    data = make_identities(tmp_path / "people", n_ids=5, per_id=4)
    watch = _watch(tmp_path / "run")
    train_embedding(cfg(data, tmp_path / "run", epochs=2), progress=False, extra_callbacks=[watch])
    assert len(watch.seen) == 2 and watch.seen[0] != watch.seen[1]


# --------------------------------------------------------------------------- optimize


def _variants(status: str) -> dict:
    def v(size: float, speed: float, acc: float, st: str = "ok") -> dict:
        return {"size_bytes": size * 1e6, "images_per_s": speed, "accuracy": acc, "status": st}

    return {
        "run": "/runs/shop",
        "task": "classification",
        "eval_images": 120,
        "batch_size": 32,
        "variants": {"fp32": v(16.0, 100, 0.95), "int8": v(4.1, 260, 0.94, status)},
    }


def test_the_variants_plot_shows_size_speed_accuracy_and_flags_a_variant_out_of_tolerance(
    tmp_path: Path,
) -> None:
    from vitrina.report.pictures import plot_variants

    def red_pixels(path: Path) -> int:
        a = assert_png_shows_something(path, min_size=(600, 150))
        return int(((abs(a - np.array([210, 60, 44])) < 12).all(axis=2)).sum())

    fine = red_pixels(plot_variants(_variants("ok"), tmp_path / "ok.png"))
    flagged = red_pixels(plot_variants(_variants("outside tolerance"), tmp_path / "bad.png"))
    assert fine == 0 and flagged > 300  # three red bars, one per panel


# --------------------------------------------------------------------------- no pyplot


def test_drawing_never_touches_pyplot_or_the_backend(tmp_path: Path) -> None:
    """A notebook's matplotlib is left as it was: no pyplot import, no backend switch."""
    script = f"""
import sys, matplotlib
matplotlib.use("svg")
import numpy as np
from vitrina.report import plot_confusion, plot_curves
from vitrina.report.pictures import plot_sizes, plot_variants, plot_per_class
out = {str(tmp_path)!r}
plot_curves([{{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5}}],
            out + "/c.png")
plot_confusion(np.eye(2), ["a", "b"], out + "/m.png")
plot_sizes([10, 20], [30, 40], out + "/s.png")
plot_per_class(["a", "b"], [0.5, 1.0], [1.0, 0.5], [3, 4], out + "/p.png")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "ok", done.stderr
    for name in ("c", "m", "s", "p"):
        assert_png_shows_something(tmp_path / f"{name}.png")


def test_a_report_that_cannot_be_written_is_refused_before_any_work(
    toy_run: Path, tmp_path: Path, photos: Path, capsys, monkeypatch
) -> None:
    from conftest import usage_error
    from vitrina.classify.sort import sort_folder
    from vitrina.data import inspect_folder
    from vitrina.errors import VitrinaError

    out = tmp_path / "sorted"
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("mine")
    # the command line refuses both as usage errors, before any work
    monkeypatch.setenv("COLUMNS", "400")  # the error box on one line: paths not wrapped
    code, _, err = run_cli(
        capsys, "sort", photos, "--model", toy_run, "--out", out, "--report", tmp_path / "a-folder"
    )
    assert code == 2
    usage_error(err, "--report", "a-folder", "is a directory")
    code, _, err = run_cli(capsys, "data", "inspect", photos, "--out", tmp_path / "a-file")
    assert code == 2
    usage_error(err, "--out", "a-file", "is a file")
    # and the API with one line naming the path and the option
    with pytest.raises(VitrinaError, match=r"a-folder.*--report"):
        sort_folder(photos, toy_run, out, report=tmp_path / "a-folder")
    assert not out.exists()  # nothing sorted
    with pytest.raises(VitrinaError, match=r"a-file.*--out"):
        inspect_folder(photos, out=tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "mine"
