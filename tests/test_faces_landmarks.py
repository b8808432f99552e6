"""Landmarks of unevenly lit faces found with the light divided out (``flatten_landmarks``,
the default for new pipelines): a hard shadow no longer pulls dlib's points off the eyes and
mouth; faces in even light align exactly as before; the vectors keep their fingerprint;
galleries made before keep their plain landmarks unless a run asks.

Photos: scikit-image's astronaut, in her own light and relit with
:func:`~vitrina.faces.lighting.relight`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitrina.faces.detection import landmarks_crop
from vitrina.faces.gallery import Gallery
from vitrina.faces.lighting import relight
from vitrina.faces.pipeline import FacePipeline

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[30:230, 120:320])


@pytest.fixture(scope="module")
def pipes() -> tuple[FacePipeline, FacePipeline]:
    plain = FacePipeline(backend="eager", workers=0, flatten_landmarks=False)
    return plain, FacePipeline(backend="eager", workers=0)


def _error(face, truth) -> float:  # type: ignore[no-untyped-def]
    return float(np.abs(face.landmarks - truth.landmarks).max())


def test_flattened_landmarks_are_the_default_and_keep_the_fingerprint(pipes):
    """Which points align a face is, like which detector found it, not the vectors' space."""
    plain, flat = pipes
    assert flat.flatten_landmarks is True and plain.flatten_landmarks is False
    assert flat.settings()["flatten_landmarks"] is True
    assert FacePipeline(**plain.settings()).flatten_landmarks is False
    assert plain.fingerprint == flat.fingerprint


def test_in_even_light_the_face_aligns_exactly_as_before(crop, pipes):
    plain, flat = pipes
    (a,), (b,) = plain.faces_in(crop), flat.faces_in(crop)
    assert a.box == b.box
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_array_equal(a.chip, b.chip)
    # and the centre light (bright middle, dark edges: no edge across the face)
    (c,), (d,) = (p.faces_in(relight(crop, 0.5, "centre")) for p in pipes)
    np.testing.assert_array_equal(c.landmarks, d.landmarks)


def test_the_light_is_judged_on_the_face(crop, pipes):
    """The blend weight: 0 for her face in its own light and in a centre light (no shadow's
    edge across it), 1 lit hard from one side or from above."""
    import dlib

    from vitrina.faces.detection import landmark_light_weight
    from vitrina.faces.lighting import estimate_light, flatten_illumination, light_spread

    (box,) = pipes[1].detect(crop)
    rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
    assert landmark_light_weight(crop, rect) == 0.0
    assert landmark_light_weight(relight(crop, 0.5, "centre"), rect) == 0.0
    for kind in ("left", "right", "top"):
        assert landmark_light_weight(relight(crop, 0.9, kind), rect) > 0.9
    assert 0.0 <= landmark_light_weight(relight(crop, 0.6, "left"), rect) <= 1.0
    # a light computed before gives the same flattened photo as computing it again
    light = estimate_light(crop)
    assert light.shape == crop.shape[:2] and light.dtype == np.float32
    np.testing.assert_array_equal(
        flatten_illumination(crop, light=light), flatten_illumination(crop)
    )
    assert light_spread(np.zeros((0, 0), np.float32)) == 0.0


@pytest.mark.parametrize(("kind", "strength"), [("left", 0.9), ("right", 0.9), ("top", 0.9)])
def test_a_hard_shadow_no_longer_pulls_the_landmarks_away(crop, pipes, kind, strength):
    """Relit hard, the plain landmarks move 6-14 px from where they are in her own light; the
    flattened ones stay within 2 (measured) -- and always nearer than the plain ones."""
    plain, flat = pipes
    (truth_plain,), (truth_flat,) = plain.faces_in(crop), flat.faces_in(crop)
    shaded = relight(crop, strength, kind)
    (p,), (f,) = plain.faces_in(shaded), flat.faces_in(shaded)
    assert _error(f, truth_flat) <= 3.0
    assert _error(f, truth_flat) < _error(p, truth_plain)


def test_the_crop_whose_light_is_divided_out_is_the_face_and_half_its_size_around_it():
    import dlib

    assert landmarks_crop((400, 600, 3), dlib.rectangle(200, 100, 299, 199)) == (150, 50, 350, 250)
    # near the photo's edge: clipped; a box partly outside the photo
    assert landmarks_crop((400, 600, 3), dlib.rectangle(-20, 350, 79, 449)) == (0, 300, 130, 400)


def test_a_face_cut_by_the_photos_edge_still_aligns(crop, pipes):
    _, flat = pipes
    (face,) = flat.faces_in(crop)
    cut = np.ascontiguousarray(crop[:, face.box.left + 15 :])  # the face's left edge cut off
    found = flat.faces_in(cut)
    for f in found:
        assert np.isfinite(f.landmarks).all()
        assert f.chip.shape == face.chip.shape


def test_galleries_made_before_keep_their_plain_landmarks(tmp_path):
    """A gallery whose stored settings predate the option aligns as it always did (plain
    landmarks) unless a run asks for flattened ones, which its vectors accept."""
    plain = FacePipeline(backend="eager", flatten_landmarks=False)
    g = Gallery.for_pipeline(tmp_path / "old", plain)
    meta_path = g.path / "gallery.json"
    meta = json.loads(meta_path.read_text())
    del meta["pipeline"]["flatten_landmarks"]  # as written before 6 December 2026
    meta_path.write_text(json.dumps(meta))
    old = Gallery(g.path)
    assert old.pipeline().flatten_landmarks is False
    assert old.pipeline().fingerprint == plain.fingerprint
    assert old.pipeline(flatten_landmarks=True).flatten_landmarks is True
    assert Gallery(g.path).pipeline().flatten_landmarks is False  # a run's choice is not stored
    new = Gallery.for_pipeline(tmp_path / "new", FacePipeline(backend="eager"))
    assert Gallery(new.path).pipeline().flatten_landmarks is True


def test_cli_enroll_plain_landmarks_is_kept_by_the_gallery(tmp_path, crop, capsys):
    """``faces enroll --plain-landmarks`` makes a gallery that keeps plain landmarks (the
    default makes one with flattened ones); ``--flatten-landmarks`` on it is for that run."""
    from conftest import run_cli

    photo = tmp_path / "eileen.png"
    Image.fromarray(crop).save(photo)
    plain, flat = tmp_path / "plain.gallery", tmp_path / "flat.gallery"
    args = ("--backend", "eager")
    code, _, err = run_cli(
        capsys, "faces", "enroll", plain, "eileen", photo, "--plain-landmarks", *args
    )
    assert code == 0, err
    assert Gallery(plain).pipeline().flatten_landmarks is False
    code, _, err = run_cli(capsys, "faces", "enroll", flat, "eileen", photo, *args)
    assert code == 0, err
    assert Gallery(flat).pipeline().flatten_landmarks is True
    eve = tmp_path / "eve.png"
    Image.fromarray(relight(crop, 0.5, "left")).save(eve)
    code, out, err = run_cli(
        capsys, "faces", "enroll", plain, "eve", eve, "--flatten-landmarks", *args
    )
    assert code == 0, err
    assert Gallery(plain).pipeline().flatten_landmarks is False  # that run's choice only
    assert {p.name: p.templates for p in Gallery(plain).people()}.get("eve") == 1, out


def test_a_large_face_has_its_light_estimated_on_a_small_copy(crop):
    """The fast path (a crop over ``_LIGHT_SIDE`` pixels: the light estimated on a smaller
    copy and enlarged) against the plain estimate on the crop itself: the same light."""
    from vitrina.faces.detection import _LIGHT_SIDE, _light_of
    from vitrina.faces.lighting import estimate_light

    big = np.asarray(Image.fromarray(relight(crop, 0.8, "left")).resize((600, 600)))
    assert max(big.shape) > _LIGHT_SIDE  # the premise
    fast, plain = _light_of(big), estimate_light(big)
    assert fast.shape == plain.shape
    inner = (slice(60, 540), slice(60, 540))  # the median's border handling differs at the edge
    assert float(np.abs(fast[inner] - plain[inner]).mean()) < 0.05  # log units: 5%
    small = np.ascontiguousarray(crop[:200, :200])
    np.testing.assert_array_equal(_light_of(small), estimate_light(small))


# ------------------------------------------------------------------ generated cases
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(
    h=st.integers(8, 120),
    w=st.integers(8, 120),
    box=st.tuples(
        st.integers(-60, 150), st.integers(-60, 150), st.integers(1, 160), st.integers(1, 160)
    ),
    light=st.sampled_from(["flat", "noise", "left", "top"]),
)
@hypothesis.settings(max_examples=60, deadline=None)
def test_any_box_on_any_photo_aligns_without_error(h, w, box, light):
    """Boxes partly or wholly outside the photo, tiny photos, flat and noisy ones: the blend
    weight stays in [0, 1] and the landmarks come back finite, with or without flattening."""
    import dlib

    from vitrina.faces.detection import MIN_PHOTO_SIDE, FaceFinder, landmark_light_weight
    from vitrina.faces.types import Box

    rng = np.random.default_rng(h * 1000 + w)
    photo = np.full((h, w, 3), 120, np.uint8)
    if light == "noise":
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif light in ("left", "top"):
        photo = relight(rng.integers(60, 200, (h, w, 3), dtype=np.uint8), 0.9, light)
    left, top, bw, bh = box
    weight = landmark_light_weight(photo, dlib.rectangle(left, top, left + bw - 1, top + bh - 1))
    assert 0.0 <= weight <= 1.0
    if h < MIN_PHOTO_SIDE or w < MIN_PHOTO_SIDE:  # refused before alignment (DataError)
        return
    clipped = Box(max(left, 0), max(top, 0), min(left + bw, w), min(top + bh, h), 0.0)
    if clipped.width <= 0 or clipped.height <= 0:
        return
    for flat in (False, True):
        points, chip = FaceFinder(flatten_landmarks=flat).align(Image.fromarray(photo), clipped)
        assert points.shape == (5, 2) and np.isfinite(points).all()
        assert chip.shape == (150, 150, 3)
