"""Faces in hard light: the detector cascade (HOG, then dlib's CNN and equalised/rotated
retries only where HOG finds nothing), relighting, and what each answer says found it.

The relit face is scikit-image's astronaut (Eileen Collins), its left half darkened by a hard
one-sided light: HOG's gradients break at the shadow's edge down the middle of the face.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitrina.faces import detection
from vitrina.faces.detection import FaceFinder
from vitrina.faces.gallery import META_NAME, Gallery
from vitrina.faces.lighting import equalise, flatten_illumination, relight
from vitrina.faces.pipeline import FacePipeline
from vitrina.faces.types import Box

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """The astronaut's face in a 200x200 photo (a ~90-pixel face)."""
    return np.ascontiguousarray(skdata.astronaut()[30:230, 120:320])


@pytest.fixture(scope="module")
def relit(crop) -> np.ndarray:
    return relight(crop, 0.9, "left")


@pytest.fixture(scope="module")
def cascade() -> FacePipeline:
    return FacePipeline(backend="eager")


def iou(a: Box, b: Box) -> float:
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    h = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    return w * h / (a.width * a.height + b.width * b.height - w * h)


def test_relight_keeps_size_and_darkens_the_side_asked(crop):
    for kind in ("left", "right", "top", "centre"):
        out = relight(crop, 0.8, kind)
        assert out.shape == crop.shape and out.dtype == np.uint8
    left, right = relight(crop, 0.8, "left"), relight(crop, 0.8, "right")
    assert left[:, :60].mean() < 0.4 * crop[:, :60].mean()
    assert left[:, -60:].mean() > crop[:, -60:].mean()
    assert right[:, -60:].mean() < 0.4 * crop[:, -60:].mean()
    top = relight(crop, 0.8, "top")  # a ceiling lamp: the bottom in shadow
    assert top[-60:].mean() < 0.4 * crop[-60:].mean() and top[:60].mean() > crop[:60].mean()
    centre = relight(crop, 0.8, "centre")
    assert centre[80:120, 80:120].mean() > crop[80:120, 80:120].mean()
    assert centre[:20, :20].mean() < crop[:20, :20].mean()
    np.testing.assert_array_equal(relight(crop, 0.0), crop)
    with pytest.raises(ValueError, match="strength"):
        relight(crop, 1.0)
    with pytest.raises(ValueError, match="kind"):
        relight(crop, 0.5, "bottom")  # type: ignore[arg-type]


def test_equalise_restores_contrast_in_the_shadow(crop):
    dark = relight(crop, 0.8, "left")
    eq = equalise(dark)
    assert eq.shape == dark.shape and eq.dtype == np.uint8
    assert eq[:, :80].std() > 1.3 * dark[:, :80].std()


def test_flatten_illumination_evens_out_a_hard_side_light(crop):
    dark = relight(crop, 0.9, "right")
    before = dark.copy()
    flat = flatten_illumination(dark)
    np.testing.assert_array_equal(dark, before)  # the input is not changed
    assert flat.shape == dark.shape and flat.dtype == np.uint8
    assert (flat[..., 0] == flat[..., 1]).all() and (flat[..., 1] == flat[..., 2]).all()
    # lit half / shadowed half: ~20x before, about even after
    assert dark[:, :80].mean() > 5 * dark[:, -80:].mean()
    assert 0.8 < flat[:, :80].mean() / flat[:, -80:].mean() < 1.25
    # a flat photo has nothing to stretch: mid-grey, not amplified noise
    grey = np.full((64, 64, 3), 90, np.uint8)
    np.testing.assert_array_equal(flatten_illumination(grey), np.full_like(grey, 128))


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_flatten_illumination_leaves_no_band_where_a_hard_shadow_ends(name, side):
    """The light's estimate keeps the step at a hard shadow's edge: the flattened relit photo
    looks, column by column, like the same photo flattened in its own light. (A Gaussian
    estimate smears the step: a band down the photo where the shadow ends, on a face down its
    middle, up to 75 grey levels off, over 32 in 5 of these 6 cases.)"""
    photo = getattr(skdata, name)()
    photo = photo[:, :, None].repeat(3, 2) if photo.ndim == 2 else photo
    photo = np.ascontiguousarray(photo[100:300, 100:300])
    own = flatten_illumination(photo)[..., 0].astype(float).mean(axis=0)
    lit = flatten_illumination(relight(photo, 0.9, side))[..., 0].astype(float).mean(axis=0)
    assert np.abs(lit - own)[10:-10].max() < 32


def test_last_stage_upsamples_twice_only_on_a_small_photo_where_once_finds_nothing(
    monkeypatch,
):
    """A small face in hard light gets a second, larger look; a photo where the first look
    found a face, or one too large to upsample further, pays for one CNN pass only."""
    calls: list[tuple[int, int]] = []
    answer: list = []

    def cnn(img, min_score, upsample):
        calls.append((max(img.shape[:2]), upsample))
        return list(answer)

    monkeypatch.setattr(detection, "_cnn_scaled", cnn)
    stage = dict(detection.CASCADE_STAGES)["cnn-flattened"]
    small, large = np.zeros((112, 92, 3), np.uint8), np.zeros((240, 320, 3), np.uint8)
    assert stage(small, 1, 0.0) == [] and calls == [(112, 1), (112, 2)]
    calls.clear()
    assert stage(large, 1, 0.0) == [] and calls == [(320, 1)]  # 4 x 320 > CNN_MAX_SIDE
    calls.clear()
    answer.append(("face", 1.0))
    assert stage(small, 1, 0.0) == [("face", 1.0)] and calls == [(112, 1)]


def test_cascade_last_stage_finds_a_face_in_black_shadow(crop):
    """A 120-pixel photo lit hard from the right (0.96): HOG, the CNN, the equalised and the
    rotated retries all find nothing, as does the CNN on an equalised copy; the CNN on the
    illumination-flattened copy finds the face where HOG finds it in the original light."""
    small = np.asarray(Image.fromarray(crop).resize((120, 120), Image.Resampling.BILINEAR))
    (before,) = FaceFinder("hog").detect(Image.fromarray(small))
    dark = relight(small, 0.96, "right")
    assert not any(stage(dark, 1, 0.0) for _, stage in detection.CASCADE_STAGES[:-1])
    assert detection._cnn_scaled(equalise(dark), 0.0, 1) == []  # the stage it replaced
    ((box, found_by),) = FaceFinder().detect_with_source(Image.fromarray(dark))
    assert found_by == "cnn-flattened" and iou(box, before) > 0.5


def test_cascade_finds_the_side_lit_face_hog_misses(crop, relit, cascade):
    """The relit face: HOG finds nothing, the cascade finds the face where HOG found it in
    the original light, and says which detector did."""
    hog = FaceFinder("hog")
    (before,) = hog.detect(Image.fromarray(crop))
    assert hog.detect(Image.fromarray(relit)) == []  # the premise: HOG misses it
    (face,) = cascade.faces_in(relit)
    assert face.detector == "cnn" and iou(face.box, before) > 0.6
    assert face.chip.shape == (150, 150, 3) and face.vector.shape == (128,)


def test_cascade_gives_hogs_faces_where_hog_finds_them(crop, cascade):
    left = crop
    right = np.repeat(skdata.camera()[60:260, 130:330, None], 3, axis=2)
    two = np.ascontiguousarray(np.concatenate([left, right], axis=1))
    for photo in (crop, two):
        h = FacePipeline("hog", backend="eager").faces_in(photo)
        c = cascade.faces_in(photo)
        assert len(h) == len(c) >= 1
        for fh, fc in zip(h, c, strict=True):
            assert fc.box == fh.box and fc.detector == "hog" and fh.detector == "hog"
            np.testing.assert_array_equal(fc.landmarks, fh.landmarks)
            np.testing.assert_array_equal(fc.chip, fh.chip)
            np.testing.assert_allclose(fc.vector, fh.vector, atol=1e-6)


def test_rotated_retry_maps_the_box_back_upright(crop):
    """HOG on a copy turned by the opposite angle finds a 15-degree tilted face; the box is
    mapped back around the face's centre in the photo's pixels."""
    import cv2

    (upright,) = FaceFinder("hog").detect(Image.fromarray(crop))
    m = cv2.getRotationMatrix2D((100.0, 100.0), 15.0, 1.0)
    tilted = cv2.warpAffine(crop, m, (200, 200), flags=cv2.INTER_LINEAR)
    found = detection._hog_rotated(tilted, 1, 0.0)
    assert found
    r = found[0][0]
    cx, cy = m @ np.array(
        [(upright.left + upright.right) / 2, (upright.top + upright.bottom) / 2, 1]
    )
    assert abs((r.left() + r.right()) / 2 - cx) < 10 and abs((r.top() + r.bottom()) / 2 - cy) < 10


def test_blank_photo_runs_the_whole_cascade_and_finds_nothing(monkeypatch):
    ran = []
    stages = [
        (name, lambda img, up, ms, name=name, f=f: ran.append(name) or f(img, up, ms))
        for name, f in detection.CASCADE_STAGES
    ]
    monkeypatch.setattr(detection, "CASCADE_STAGES", tuple(stages))
    assert FaceFinder().detect_with_source(Image.new("RGB", (64, 64), (128, 128, 128))) == []
    assert ran == [name for name, _ in stages]


def test_assumed_faces_say_so(crop):
    # min_score 10: HOG finds nothing, so the face of a cropped-face photo is assumed
    finder = FaceFinder("hog", min_score=10.0, assume_face=True)
    (face,) = finder.faces(Image.fromarray(crop))
    assert face.detector == "assumed"
    # a flat photo is assumed to hold no face at all (issue 13, defect 11)
    assert finder.faces(Image.new("RGB", (92, 112), (128, 128, 128))) == []


def test_galleries_keep_their_recorded_detector(tmp_path, crop):
    """A gallery made before the cascade (``"detector": "hog"`` recorded, or nothing recorded
    with the defaults of then) still opens with HOG; a new one gets the cascade."""
    new = Gallery.for_pipeline(tmp_path / "new", FacePipeline())
    assert new.pipeline().detector == "cascade"
    for name, stored in (("hog", {"detector": "hog", "upsample": 1}), ("none", None)):
        p = FacePipeline()
        g = Gallery.create(
            tmp_path / name, dim=p.dim, fingerprint=p.fingerprint, embedder_label="x"
        )
        meta = json.loads((g.path / META_NAME).read_text())
        meta["pipeline"] = stored
        (g.path / META_NAME).write_text(json.dumps(meta))
        assert Gallery(g.path).pipeline().detector == "hog"


def test_identifications_say_which_detector_found_the_face(tmp_path, crop, relit, cascade):
    g = Gallery.for_pipeline(tmp_path / "g", cascade)
    lit = cascade.faces_in(crop)
    from vitrina.faces.types import PhotoFaces

    g.enroll("eileen", PhotoFaces(tmp_path / "astro.png", lit, sha256="a" * 64))
    dark = PhotoFaces(tmp_path / "relit.png", cascade.faces_in(relit), sha256="b" * 64)
    (i,) = g.identify(dark)
    assert i.detector == "cnn" and i.to_dict()["detector"] == "cnn"
    (j,) = g.identify(PhotoFaces(tmp_path / "again.png", lit, sha256="c" * 64))
    assert j.detector == "hog" and j.name == "eileen"
