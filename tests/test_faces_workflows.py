"""The faces workflows the CLI calls (vitrina.faces.enroll / identify / calibrate), tested as
API: on real faces (scikit-image's astronaut and cameraman) and on synthetic vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_faces_gallery import D, centres, face, photo, photos_of
from vitrina.errors import DataError, VitrinaError
from vitrina.faces.calibrate import ROC_NAME, calibrate_gallery
from vitrina.faces.enroll import enroll_photos, enrollment_groups, open_gallery
from vitrina.faces.gallery import Gallery, GalleryError
from vitrina.faces.identify import identify_photos, largest_face, verify_photos
from vitrina.faces.types import PhotoFaces

skdata = pytest.importorskip("skimage.data")


def _save(a: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """people/eileen (3 astronaut crops), people/camera (2 cameraman crops); new/ with one of
    each, a wall with no face and a broken file."""
    root = tmp_path_factory.mktemp("faces")
    astro = skdata.astronaut()
    cam = np.repeat(skdata.camera()[:, :, None], 3, axis=2)
    for i, (y, x) in enumerate([(30, 120), (20, 110), (40, 130)]):
        _save(astro[y : y + 200, x : x + 200], root / "people" / "eileen" / f"e{i}.jpg")
    for i, (y, x) in enumerate([(60, 130), (65, 135)]):
        _save(cam[y : y + 200, x : x + 200], root / "people" / "camera" / f"c{i}.png")
    _save(astro[25:225, 115:315], root / "new" / "astro.jpg")
    _save(cam[70:270, 130:330], root / "new" / "cam.png")
    _save(np.full((200, 200, 3), 128, np.uint8), root / "new" / "wall.jpg")
    (root / "new" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


# ------------------------------------------------------------------------------ enroll


def test_enrollment_groups_by_name_or_by_folder(faces: Path) -> None:
    people = faces / "people"
    groups = enrollment_groups(folders=people)
    assert list(groups) == ["camera", "eileen"]
    assert [p.name for p in groups["eileen"]] == ["e0.jpg", "e1.jpg", "e2.jpg"]
    # a folder among the photos is expanded; files are kept as given
    one = enrollment_groups("eileen", [people / "eileen", people / "camera" / "c0.png"])
    assert [p.name for p in one["eileen"]] == ["e0.jpg", "e1.jpg", "e2.jpg", "c0.png"]


@pytest.mark.parametrize(
    ("name", "photos", "folders", "match"),
    [
        (None, None, None, "give NAME and PHOTOS"),
        ("eileen", None, None, "give NAME and PHOTOS"),
        ("eileen", ["x.jpg"], "people", "not both"),
    ],
)
def test_enrollment_groups_needs_one_form(name, photos, folders, match) -> None:
    with pytest.raises(VitrinaError, match=match):
        enrollment_groups(name, photos, folders=folders)


def test_enrollment_groups_checks_names_and_paths_before_reading(faces: Path) -> None:
    with pytest.raises(GalleryError, match="not allowed"):
        enrollment_groups("../eve", [faces / "people" / "eileen"])
    with pytest.raises(DataError, match=r"nope\.jpg: no such file or folder"):
        enrollment_groups("eve", [faces / "nope.jpg"])


def test_enroll_photos_creates_the_gallery_and_a_second_run_adds_nothing(
    faces: Path, tmp_path: Path
) -> None:
    g = tmp_path / "staff.gallery"
    seen = []
    run = enroll_photos(g, folders=faces / "people", on_progress=lambda d, n: seen.append((d, n)))
    assert {r.name: len(r.added) for r in run.reports} == {"camera": 2, "eileen": 3}
    assert all(r.new_person for r in run.reports) and not run.unreadable
    assert seen[-1] == (5, 5)
    assert {p.name: p.templates for p in Gallery(g).people()} == {"camera": 2, "eileen": 3}
    again = enroll_photos(g, "eileen", [faces / "people" / "eileen", faces / "new" / "broken.jpg"])
    (rep,) = again.reports
    assert rep.added == [] and len(rep.already) == 3 and not rep.new_person
    assert [pf.path.name for pf in again.unreadable] == ["broken.jpg"]
    assert rep.unreadable and rep.unreadable[0][0].endswith("broken.jpg")


def test_open_gallery_keeps_the_stored_pipeline(faces: Path, tmp_path: Path) -> None:
    g = tmp_path / "g"
    gallery, pipe = open_gallery(g, upsample=0, assume_face=True)
    assert (pipe.upsample, pipe.assume_face) == (0, True)
    _, again = open_gallery(g)  # stored settings, not the defaults
    assert (again.upsample, again.assume_face) == (0, True)
    assert gallery.dim == pipe.dim == 128


# ------------------------------------------------------------------------------ identify


@pytest.fixture(scope="module")
def staff(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = tmp_path_factory.mktemp("staff") / "staff.gallery"
    enroll_photos(g, folders=faces / "people")
    return g


def test_identify_photos_names_known_faces_and_keeps_bad_photos(
    staff: Path, faces: Path, tmp_path: Path
) -> None:
    out = tmp_path / "annotated"
    run = identify_photos(staff, [faces / "new"], annotate_dir=out)
    by_name = {p.photo.path.name: p for p in run.photos}
    assert sorted(by_name) == ["astro.jpg", "broken.jpg", "cam.png", "wall.jpg"]
    assert [i.name for i in by_name["astro.jpg"].faces] == ["eileen"]
    assert [i.name for i in by_name["cam.png"].faces] == ["camera"]
    assert by_name["wall.jpg"].faces == [] and by_name["wall.jpg"].photo.error is None
    assert by_name["broken.jpg"].photo.error and by_name["broken.jpg"].annotated is None
    written = sorted(p.name for p in out.iterdir())
    assert written == ["astro.jpg", "cam.jpg", "wall.jpg"]  # every readable photo
    assert by_name["astro.jpg"].annotated == out / "astro.jpg"
    assert "0.6" in run.threshold_source  # not calibrated: dlib's default, and it says so


def test_identify_photos_can_enroll_the_unknown(faces: Path, tmp_path: Path) -> None:
    g = tmp_path / "g"
    enroll_photos(g, "eileen", [faces / "people" / "eileen"])
    run = identify_photos(g, [faces / "new" / "cam.png"], enroll_unknown=True)
    (ident,) = run.photos[0].faces
    assert ident.enrolled and ident.name == "person-0001"
    again = identify_photos(g, [faces / "people" / "camera" / "c0.png"])
    assert [i.name for i in again.photos[0].faces] == ["person-0001"]


# ------------------------------------------------------------------------------ verify


def test_verify_photos_holds_the_distance_to_the_threshold(staff: Path, faces: Path) -> None:
    e0, e1 = faces / "people" / "eileen" / "e0.jpg", faces / "people" / "eileen" / "e1.jpg"
    cam = faces / "people" / "camera" / "c0.png"
    same = verify_photos(e0, e1)
    assert same.same and same.distance <= same.threshold == 0.6
    assert same.source == "default: dlib's 0.6 (no --gallery)"
    other = verify_photos(e0, cam)
    assert not other.same and other.distance > 0.6
    with_gallery = verify_photos(e0, e1, gallery=staff)
    assert with_gallery.distance == pytest.approx(same.distance, abs=1e-5)
    assert with_gallery.source == Gallery(staff).threshold_source
    assert json.loads(json.dumps(other.to_dict()))["same"] is False
    with pytest.raises(DataError, match=r"wall\.jpg: no face found"):
        verify_photos(e0, faces / "new" / "wall.jpg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        verify_photos(faces / "new" / "broken.jpg", e0)


def test_largest_face_is_the_biggest_box_first_of_equals() -> None:
    v = np.zeros(D, np.float32)
    small, big, big_too = face(v, 0, size=20), face(v, 1, size=50), face(v, 2, size=50)
    assert largest_face(photo("p", small, big, big_too)) is big
    with pytest.raises(DataError, match="no face found"):
        largest_face(photo("empty"))
    with pytest.raises(DataError, match="cannot read"):
        largest_face(PhotoFaces(Path("x.jpg"), [], error="cannot read"))


# ------------------------------------------------------------------------------ calibrate


def test_calibrate_gallery_stores_the_rule_and_draws_its_roc(tmp_path: Path) -> None:
    g = Gallery.create(tmp_path / "g", dim=D, fingerprint="fp", embedder_label="synthetic")
    c = centres(4, seed=70)
    for i in range(4):
        g.enroll(f"p{i}", photos_of(f"p{i}", c[i], 3, seed=70 + i))
    run = calibrate_gallery(g.path, far=0.05)
    assert run.report.source == "gallery" and run.report.openset.far <= 0.05
    assert run.stored_in == g.path / "gallery.json"
    stored = json.loads(run.stored_in.read_text())["calibration"]
    assert stored["far"] == 0.05 and stored["threshold"] == pytest.approx(run.report.threshold)
    assert run.roc == g.path / ROC_NAME and run.roc.read_bytes()[:4] == b"\x89PNG"
    assert Gallery(g.path).calibrated
