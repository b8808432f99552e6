"""`vitrina faces ...` end to end on real faces (scikit-image's astronaut and cameraman)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error, run_cli
from vitrina.io import file_digest

skdata = pytest.importorskip("skimage.data")


def _save(a: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """people/eileen (3 crops of the astronaut), people/camera (2 crops of the cameraman),
    new/: a fourth astronaut crop, a cameraman crop, both in one photo, a photo with no face
    and a broken file."""
    root = tmp_path_factory.mktemp("faces")
    astro = skdata.astronaut()
    cam = np.repeat(skdata.camera()[:, :, None], 3, axis=2)
    for i, (y, x) in enumerate([(30, 120), (20, 110), (40, 130)]):
        _save(astro[y : y + 200, x : x + 200], root / "people" / "eileen" / f"e{i}.jpg")
    for i, (y, x) in enumerate([(60, 130), (65, 135)]):
        _save(cam[y : y + 200, x : x + 200], root / "people" / "camera" / f"c{i}.png")
    _save(astro[25:225, 115:315], root / "new" / "astro.jpg")
    _save(cam[70:270, 130:330], root / "new" / "cam.png")
    both = np.concatenate([astro[30:230, 120:320], cam[60:260, 130:330]], axis=1)
    _save(both, root / "new" / "both.png")
    _save(np.full((200, 200, 3), 128, np.uint8), root / "new" / "wall.jpg")
    (root / "new" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def gallery(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = tmp_path_factory.mktemp("g") / "staff.gallery"
    from vitrina.cli import main

    assert main(["faces", "enroll", str(g), "--folders", str(photos / "people")]) == 0
    return g


def test_enroll_list_and_reenroll_is_a_noop(gallery, photos, capsys):
    code, out, err = run_cli(capsys, "faces", "list", str(gallery), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {p["name"]: p["templates"] for p in doc["people"]} == {"camera": 2, "eileen": 3}
    assert doc["calibrated"] is False and "0.6" in doc["threshold_source"]
    code, out, _ = run_cli(
        capsys, "faces", "enroll", str(gallery), "eileen", str(photos / "people" / "eileen")
    )
    assert code == 0 and "0 added, 3 already enrolled" in out


def test_identify_names_known_faces_and_annotates(gallery, photos, tmp_path, capsys):
    new = photos / "new"
    code, out, err = run_cli(
        capsys,
        "faces",
        "identify",
        str(gallery),
        str(new / "astro.jpg"),
        str(new / "both.png"),
        str(new / "wall.jpg"),
        "--json",
        "--annotate",
        str(tmp_path / "ann"),
    )
    assert code == 0, err
    rows = json.loads(out)
    named = [(Path(r["photo"]).name, r["name"]) for r in rows if "name" in r]
    assert named == [("astro.jpg", "eileen"), ("both.png", "eileen"), ("both.png", "camera")]
    assert {"photo": str(new / "wall.jpg"), "faces": 0} in rows
    assert all(r["calibrated"] is False for r in rows if "name" in r)
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == [
        "astro.jpg",
        "both.jpg",
        "wall.jpg",
    ]


def test_enroll_unknown_then_recognise(photos, tmp_path, capsys):
    g = tmp_path / "g"
    people = photos / "people"
    assert run_cli(capsys, "faces", "enroll", str(g), "eileen", str(people / "eileen"))[0] == 0
    code, out, _ = run_cli(
        capsys,
        "faces",
        "identify",
        str(g),
        str(people / "camera" / "c0.png"),
        "--enroll-unknown",
        "--json",
    )
    assert code == 0
    (row,) = json.loads(out)
    assert row["name"] == "person-0001" and row["enrolled"] is True
    code, out, _ = run_cli(
        capsys, "faces", "identify", str(g), str(photos / "new" / "cam.png"), "--json"
    )
    assert json.loads(out)[0]["name"] == "person-0001"
    assert run_cli(capsys, "faces", "rename", str(g), "person-0001", "cameraman")[0] == 0
    code, out, _ = run_cli(capsys, "faces", "forget", str(g), "cameraman")
    assert code == 0 and "1 templates" in out
    assert not (g / "chips" / "cameraman").exists()


def test_sort_by_person_is_safe_and_resumable(gallery, photos, tmp_path, capsys):
    new = photos / "new"
    before = {p.name: file_digest(p) for p in new.iterdir()}
    out_dir = tmp_path / "sorted"
    code, out, err = run_cli(
        capsys, "faces", "sort", str(new), "--gallery", str(gallery), "--out", str(out_dir)
    )
    assert code == 0, err
    listing = {d.name: sorted(p.name for p in d.iterdir()) for d in out_dir.iterdir() if d.is_dir()}
    assert listing == {
        "camera": ["both.png", "cam.png"],
        "eileen": ["astro.jpg", "both.png"],
        "no-face": ["wall.jpg"],
        "unreadable": ["broken.jpg"],
    }
    with open(out_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {p.name: file_digest(p) for p in new.iterdir()} == before  # sources untouched
    code, out, _ = run_cli(
        capsys, "faces", "sort", str(new), "--gallery", str(gallery), "--out", str(out_dir)
    )
    assert code == 0 and "already sorted" in out
    assert sum(1 for _ in (out_dir / "eileen").iterdir()) == 2  # nothing duplicated


def test_verify_two_photos(photos, capsys):
    people = photos / "people"
    code, out, _ = run_cli(
        capsys,
        "faces",
        "verify",
        str(people / "eileen" / "e0.jpg"),
        str(people / "eileen" / "e1.jpg"),
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["same"] is True and doc["distance"] < doc["threshold"] == 0.6
    code, out, _ = run_cli(
        capsys,
        "faces",
        "verify",
        str(people / "eileen" / "e0.jpg"),
        str(people / "camera" / "c0.png"),
    )
    assert code == 0 and "different people" in out


def test_bad_inputs_are_one_line(gallery, photos, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "faces", "enroll", str(gallery), "../evil", str(photos / "new" / "astro.jpg")
    )
    assert code == 1
    one_line_error(err, "../evil")
    code, _, err = run_cli(capsys, "faces", "list", str(tmp_path))
    assert code == 1
    one_line_error(err, "not a face gallery")
    # Issue 13 #9 / #13: a name too long on disk, one with a right-to-left override; nothing
    # is created for them, not even the gallery.
    for name, says in (("\U0001f600" * 100, "400 bytes"), ("\u202eevil", "U+202E")):
        fresh = tmp_path / "fresh.gallery"
        code, _, err = run_cli(
            capsys, "faces", "enroll", str(fresh), name, str(photos / "new" / "astro.jpg")
        )
        assert code == 1 and not fresh.exists()
        one_line_error(err, "person name", says)
    code, _, err = run_cli(
        capsys,
        "faces",
        "verify",
        str(photos / "new" / "wall.jpg"),
        str(photos / "new" / "astro.jpg"),
    )
    assert code == 1
    one_line_error(err, "wall.jpg", "no face")
    code, _, err = run_cli(capsys, "faces", "calibrate", str(gallery))
    assert code == 1
    one_line_error(err, "at least 3 people")


def test_a_run_folder_can_be_the_embedder_and_is_remembered(photos, toy_run, tmp_path, capsys):
    g = tmp_path / "g"
    people = photos / "people"
    code, _, err = run_cli(
        capsys,
        "faces",
        "enroll",
        str(g),
        "eileen",
        str(people / "eileen"),
        "--embedder",
        str(toy_run),
    )
    assert code == 0, err
    code, out, _ = run_cli(capsys, "faces", "list", str(g), "--json")
    assert "tutorial_cnn" in json.loads(out)["embedder"]
    # Later commands use the stored embedder without being told.
    code, out, err = run_cli(
        capsys, "faces", "identify", str(g), str(photos / "new" / "astro.jpg"), "--json"
    )
    assert code == 0, err
    assert json.loads(out)[0]["person"] == "eileen"


def test_sort_move_survives_a_kill_after_a_delete_and_a_half_row(gallery, photos, tmp_path):
    """Issue 13 #5 and #6 for the faces sort (the same journal as `vitrina sort`): SIGKILL
    between a source's delete and its rows, then a half-written row; the re-run finishes
    with every photo in each of its folders once and one row per placement."""
    import shutil

    from conftest import killed_after_delete
    from vitrina.faces.sort import sort_faces

    new = tmp_path / "new"
    shutil.copytree(photos / "new", new)
    before = {p.name: file_digest(p) for p in new.iterdir()}
    out_dir = tmp_path / "sorted"

    def run() -> None:
        sort_faces(new, gallery, out_dir, method="move")

    assert killed_after_delete(run, after=2) == 9
    with open(out_dir / "manifest.csv", "ab") as f:
        f.write(b"/photos/half,/sorted/eil")  # what a kill mid-write (or a full disk) leaves
    sort_faces(new, gallery, out_dir, method="move")
    assert list(new.iterdir()) == []  # every source moved
    listing = {d.name: sorted(p.name for p in d.iterdir()) for d in out_dir.iterdir() if d.is_dir()}
    assert listing == {
        "camera": ["both.png", "cam.png"],
        "eileen": ["astro.jpg", "both.png"],
        "no-face": ["wall.jpg"],
        "unreadable": ["broken.jpg"],
    }
    for folder, names in listing.items():
        for n in names:
            assert file_digest(out_dir / folder / n) == before[n]
    with open(out_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(None not in r.values() and len(r) == 7 for r in rows)
    assert sorted(Path(r["destination"]).relative_to(out_dir).as_posix() for r in rows) == sorted(
        f"{folder}/{n}" for folder, names in listing.items() for n in names
    )
    assert not (out_dir / "manifest.csv.pending").exists()


def test_chips_writes_the_aligned_faces_of_a_folder_of_people(photos, tmp_path, capsys):
    """`faces chips`: one aligned chip per photo with a face, named after the photo, in a
    folder per person; photos without a face or unreadable are listed; OUT is then a
    training set for train-embedding."""
    import shutil

    people = tmp_path / "people"
    shutil.copytree(photos / "people", people)
    shutil.copy(photos / "new" / "wall.jpg", people / "eileen" / "wall.jpg")
    shutil.copy(photos / "new" / "broken.jpg", people / "camera" / "broken.jpg")
    shutil.copy(photos / "new" / "both.png", people / "camera" / "both.png")
    before = {p: p.read_bytes() for p in people.rglob("*") if p.is_file()}
    out_dir = tmp_path / "chips"
    code, out, err = run_cli(capsys, "faces", "chips", str(people), str(out_dir), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["written"] == 6 and doc["identities"] == 2 and doc["photos"] == 8
    assert [Path(p).name for p in doc["no_face"]] == ["wall.jpg"]
    assert [Path(u["path"]).name for u in doc["unreadable"]] == ["broken.jpg"]
    assert [Path(p).name for p in doc["several_faces"]] == ["both.png"]
    chips = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert chips == [
        "camera/both.png",
        "camera/c0.png",
        "camera/c1.png",
        "eileen/e0.png",
        "eileen/e1.png",
        "eileen/e2.png",
    ]
    for c in chips:
        assert Image.open(out_dir / c).size == (150, 150)
    manifest = json.loads((out_dir / "chips.json").read_text())
    assert manifest["chips"]["eileen/e0.png"]["source"] == "eileen/e0.jpg"
    assert manifest["chips"]["camera/both.png"]["faces_in_photo"] == 2
    from vitrina.training.loss_choice import choose_loss

    assert choose_loss(out_dir)[0] == "arcface"  # train-embedding --loss auto: a face set
    assert {p: p.read_bytes() for p in people.rglob("*") if p.is_file()} == before  # only read
    # the chips are the gallery's: what enroll stores for the same photo
    from vitrina.faces.pipeline import FacePipeline

    face = FacePipeline().faces_in(Image.open(people / "eileen" / "e0.jpg"))[0]
    assert (
        np.abs(np.asarray(Image.open(out_dir / "eileen/e0.png"), np.int16) - face.chip).max() == 0
    )
    # OUT must be new or empty, and outside PHOTOS
    code, _, err = run_cli(capsys, "faces", "chips", str(people), str(out_dir))
    assert code == 1
    one_line_error(err, "not empty")
    code, _, err = run_cli(capsys, "faces", "chips", str(people), str(people / "chips"))
    assert code == 1
    one_line_error(err, "outside the photos folder")
    code, _, err = run_cli(capsys, "faces", "chips", str(tmp_path / "nope"), str(tmp_path / "o"))
    assert code == 1
    one_line_error(err, "nope")
    # chip size and a detector that finds nothing on crops: assume-face takes the centre
    code, out, err = run_cli(
        capsys,
        "faces",
        "chips",
        str(people),
        str(tmp_path / "small"),
        "--chip-size",
        "64",
        "--assume-face",
    )
    assert code == 0, err
    # the wall's centre is no face, even assumed (issue 13 #11): it holds nothing face-like
    assert "6 chips of 2 people from 8 photos" in out and "1 without a face" in out
    assert not (tmp_path / "small" / "eileen" / "wall.png").exists()
    assert Image.open(tmp_path / "small" / "eileen" / "e0.png").size == (64, 64)


def test_list_sheet_shows_each_persons_chips(gallery, tmp_path, capsys):
    from pictures_check import assert_png_shows_something

    sheet = tmp_path / "people.png"
    code, _, err = run_cli(capsys, "faces", "list", str(gallery), "--sheet", str(sheet))
    assert code == 0, err
    a = assert_png_shows_something(sheet)
    # two people: two rows of 96-pixel chips; eileen's row holds three chips
    assert a.shape[0] >= 2 * 96 and a.shape[1] >= 3 * 96
    from vitrina.faces import Gallery

    chips = {p.name: p.chips for p in Gallery(gallery).people()}
    assert all(c.is_file() for cs in chips.values() for c in cs)

    # rows by name: camera first (the cameraman's chips are grey), eileen below (in colour);
    # the sheet's layout: 6 px margin, an 18 px title, 96 px chips, a 30 px caption, 6 px gap
    def colourfulness(row: int) -> float:
        y = 6 + row * (18 + 96 + 30 + 6) + 18
        chip = a[y + 10 : y + 86, 16:86]
        return float(np.abs(chip[..., 0] - chip[..., 2]).mean())

    assert colourfulness(0) < 3 < 10 < colourfulness(1)


def test_sort_report_shows_people_least_sure_first(gallery, photos, tmp_path, capsys):
    from pictures_check import Page, all_images_decoded, chromium, sections, table_counts

    out_dir, report = tmp_path / "sorted", tmp_path / "faces.html"
    code, _, err = run_cli(
        capsys, "faces", "sort", str(photos / "new"), "--gallery", str(gallery), "--out",
        str(out_dir), "--report", str(report),
    )  # fmt: skip
    assert code == 0, err
    for browser in chromium():
        with Page(browser, report) as page:
            all_images_decoded(page)
            assert table_counts(page) == {"camera": 2, "eileen": 2, "no-face": 1, "unreadable": 1}
            shown = {s["folder"]: s for s in sections(page)}
            assert [f for f in shown][-2:] == ["no-face", "unreadable"]
            assert shown["no-face"]["alarm"] and not shown["eileen"]["alarm"]
            ranks = [float(r) for r in shown["eileen"]["ranks"]]
            assert ranks == sorted(ranks) and all(r < 0 for r in ranks)  # minus the distance
            assert "distance" in shown["eileen"]["captions"][0]
            assert any("broken.jpg" in c for c in shown["unreadable"]["captions"])


def test_calibrate_with_light_dims_removes_them_and_still_names(photos, tmp_path, capsys):
    """`faces calibrate --light-dims 3` on real faces: the directions are learned from the
    gallery's chips through its own pipeline, stored with the rule, and identify uses them."""
    from vitrina.cli import main

    people = tmp_path / "people"
    for src in (photos / "people").iterdir():
        (people / src.name).mkdir(parents=True)
        for p in src.iterdir():
            (people / src.name / p.name).write_bytes(p.read_bytes())
    cam = np.repeat(skdata.camera()[:, :, None], 3, axis=2)[:, ::-1]  # a third "person"
    for i, (y, x) in enumerate([(60, 110), (65, 115)]):
        _save(np.ascontiguousarray(cam[y : y + 200, x : x + 200]), people / "mirror" / f"m{i}.png")
    g = tmp_path / "g"
    assert main(["faces", "enroll", str(g), "--folders", str(people)]) == 0
    code, _, err = run_cli(capsys, "faces", "calibrate", str(g), "--light-dims", "-1")
    assert code == 2 and "Traceback" not in err
    code, out, err = run_cli(capsys, "faces", "calibrate", str(g), "--light-dims", "3")
    assert code == 0, err
    assert "light: 3 directions removed from every vector (learned from 7 enrolled faces" in out
    rule = json.loads((g / "gallery.json").read_text())["rule"]
    basis = np.asarray(rule["light_basis"])
    assert basis.shape == (3, 128)
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-6)
    code, out, err = run_cli(
        capsys, "faces", "identify", str(g), str(photos / "new" / "astro.jpg"), "--json"
    )
    assert code == 0, err
    (row,) = json.loads(out)
    # 7 faces of 3 people cannot solve a threshold that names anyone (the report warns), but
    # the nearest person, compared with the light removed, is still her, far ahead
    assert row["person"] == "eileen" and row["calibrated"] is True
    assert row["runner_up_distance"] - row["distance"] > 0.3
