"""Light directions removed from face vectors (``vitrina faces calibrate --light-dims``): learned
from the enrolled faces relit from the left and right, stored with the rule, applied to gallery
and probes alike, so a face half in shadow is named where the plain rule calls it unknown.

A synthetic describer whose vectors mix a person's identity (the chip's pattern, free of any
column-wise brightness) with two light terms (left-right balance, overall brightness), so the
directions to find are known; and dlib's ResNet on scikit-image's astronaut, a real face."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vitrina.errors import DataError
from vitrina.faces.decision import DecisionRule
from vitrina.faces.gallery import Gallery, GalleryError
from vitrina.faces.light_projection import LIGHTS, learn_light_basis, project
from vitrina.faces.lighting import relight
from vitrina.faces.types import Box, Face, PhotoFaces

D, S = 32, 32
_RNG = np.random.default_rng(0)
_ID = _RNG.standard_normal((D, S * S)) / np.sqrt(S * S) * 0.55  # identity features -> D
_LIGHT = np.linalg.qr(_RNG.standard_normal((D, 2)))[0].T  # the two light directions


def describe(chips) -> np.ndarray:
    """Vectors of chips: identity (log luminance less its column means: what a lamp beside the
    face leaves alone) plus 0.6 x (left - right) balance and 0.3 x log brightness along
    :data:`_LIGHT`."""
    out = []
    for c in chips:
        log = np.log1p(np.asarray(c, np.float64).mean(axis=2))
        ident = _ID @ (log - log.mean(axis=0, keepdims=True)).ravel()
        balance = log[:, : S // 2].mean() - log[:, S // 2 :].mean()
        out.append(ident + 0.6 * balance * _LIGHT[0] + 0.3 * (log.mean() - 4.5) * _LIGHT[1])
    return np.asarray(out, np.float32)


PIPE = SimpleNamespace(describe=describe, finder=SimpleNamespace(correct_chip=lambda c: c))


def chip_of(person: int, photo: int) -> np.ndarray:
    """A person's pattern (reflectance 0.3-0.7 under light 200), a little different per photo."""
    base = np.random.default_rng(1000 + person).uniform(0.3, 0.7, (S, S))
    noise = np.random.default_rng(person * 100 + photo).normal(0, 0.02, (S, S))
    lum = np.clip(200 * (base + noise), 0, 255).astype(np.uint8)
    return np.repeat(lum[..., None], 3, axis=2)


def faces_photo(tag: str, chip: np.ndarray) -> PhotoFaces:
    f = Face(Box(0, 0, 40, 40), np.zeros((5, 2), np.float32), chip, describe([chip])[0])
    digest = hashlib.sha256(tag.encode()).hexdigest()
    return PhotoFaces(Path(f"/photos/{tag}.png"), [f], (100, 100), None, digest)


def enrolled_gallery(path: Path, people: int = 12) -> Gallery:
    g = Gallery.create(path, dim=D, fingerprint="fp", embedder_label="synthetic")
    for p in range(people):
        g.enroll(f"p{p:02d}", [faces_photo(f"p{p}-{i}", chip_of(p, i)) for i in range(3)])
    return g


def test_the_directions_light_moves_vectors_are_found():
    chips = [chip_of(p, 0) for p in range(6)]
    basis = learn_light_basis(chips, describe, 2)
    assert basis.shape == (2, D)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-9)  # orthonormal rows
    # the plane found is the plane of the two light terms: each is (nearly) inside it
    inside = np.linalg.norm(basis @ _LIGHT.T, axis=0)
    assert inside.min() > 0.95  # a random direction: ~0.25
    # a face relit from the side, light removed, lands where it was in its own light
    c = chip_of(7, 0)
    v, lit = describe([c])[0], describe([relight(c, 0.8, "left")])[0]
    before = np.linalg.norm(lit - v)
    after = np.linalg.norm(project(lit, basis) - project(v, basis))
    assert after < 0.2 * before


def test_project_removes_only_the_basis():
    basis = np.eye(4)[:1]  # the first axis
    x = np.array([[3.0, 1.0, 2.0, 0.5]])
    np.testing.assert_allclose(project(x, basis), [[0.0, 1.0, 2.0, 0.5]])
    assert project(x, None) is x


def test_bad_light_dims_say_so_in_one_line():
    with pytest.raises(DataError, match="at least 1"):
        learn_light_basis([chip_of(0, 0)], describe, 0)
    with pytest.raises(DataError, match="fewer than the vectors' 32 dimensions"):
        learn_light_basis([chip_of(0, 0)], describe, 32)
    with pytest.raises(DataError, match="needs enrolled faces"):
        learn_light_basis([], describe, 2)


def test_a_gallery_calibrated_with_light_dims_names_faces_in_side_light(tmp_path: Path):
    plain, light = enrolled_gallery(tmp_path / "plain"), enrolled_gallery(tmp_path / "light")
    plain.calibrate(None, far=0.05)
    report = light.calibrate(None, far=0.05, light_dims=2, pipeline=PIPE)
    assert report.light_dims == 2 and report.light_faces == 36
    assert any("light: 2 directions removed" in line for line in report.lines())

    probes = [faces_photo(f"probe-{p}", relight(chip_of(p, 5), 0.8, "left")) for p in range(12)]
    strangers = [faces_photo(f"x-{p}", relight(chip_of(p, 0), 0.8, "right")) for p in range(50, 58)]

    def named(g: Gallery) -> int:
        return sum(i.name == f"p{k:02d}" for k, i in enumerate(g.identify(probes)))

    assert named(plain) <= 6  # the premise: in that light the plain rule misses most
    assert named(light) == 12
    assert not any(i.known for i in light.identify(strangers))
    for i in light.identify(probes):  # the distance reported is the one the rule compared
        assert i.distance <= i.threshold

    # stored with the rule; a fresh handle reads it back and decides the same
    again = Gallery(light.path)
    assert again.rule == light.rule and len(again.rule.light_basis) == 2
    assert "2 light directions removed" in again.rule.describe()
    meta = json.loads((light.path / "gallery.json").read_text())
    assert len(meta["rule"]["light_basis"]) == 2 and meta["calibration"]["light_dims"] == 2
    assert "light_basis" not in meta["calibration"]["rule"]  # stored once
    assert named(again) == 12
    assert "on 36 faces of 12 people, 2 light directions removed" in again.threshold_source
    assert "light directions" not in plain.threshold_source
    # verify compares the vectors the threshold was solved on
    a, b = probes[0].faces[0], faces_photo("p0-x", chip_of(0, 1)).faces[0]
    assert again.verify(a, b).same and not plain.verify(a, b).same


def test_rules_and_galleries_without_light_directions_are_unchanged(tmp_path: Path):
    rule = DecisionRule(threshold=0.5, margin=0.1)
    assert "light_basis" not in rule.to_dict()  # gallery.json as written before
    assert DecisionRule.from_dict(rule.to_dict()) == rule
    assert DecisionRule.from_dict({"threshold": 0.5}).light_basis is None
    g = enrolled_gallery(tmp_path / "g", people=4)
    g.calibrate(None, far=0.05)
    assert g.rule.light_basis is None
    assert "light_basis" not in json.loads((g.path / "gallery.json").read_text())["rule"]


def test_bad_light_dims_and_a_gallery_without_chips_are_one_line_errors(tmp_path: Path):
    g = enrolled_gallery(tmp_path / "g", people=4)
    for bad in (-1, 1.5, True):
        with pytest.raises(GalleryError, match="light dims must be a whole number"):
            g.calibrate(None, far=0.05, light_dims=bad, pipeline=PIPE)  # type: ignore[arg-type]
    for chip in (g.path / "chips").rglob("*.png"):
        chip.unlink()
    with pytest.raises(DataError, match=r"needs the enrolled faces' chips.*--light-dims 0"):
        g.calibrate(None, far=0.05, light_dims=2, pipeline=PIPE)
    assert g.rule.light_basis is None  # nothing stored by a failed calibration


def test_the_lights_learned_are_both_sides():
    assert {kind for kind, _ in LIGHTS} == {"left", "right"}
    assert all(0 < s < 1 for _, s in LIGHTS)


def test_on_a_real_face_the_light_removed_brings_a_shadowed_face_back(tmp_path: Path):
    """dlib's ResNet on the astronaut's face: learned from the face itself, the projection
    brings its relit copies (a light not among those learned too) nearer their original."""
    skdata = pytest.importorskip("skimage.data")
    from vitrina.faces import FacePipeline

    pipe = FacePipeline(backend="eager")
    (face,) = pipe.faces_in(skdata.astronaut()[0:250, 100:350])
    basis = learn_light_basis([face.chip], pipe.describe, 3, correct=pipe.finder.correct_chip)
    assert basis.shape == (3, 128)
    v = pipe.describe([face.chip])[0]
    for kind, s in (("left", 0.8), ("right", 0.6), ("centre", 0.6)):
        lit = pipe.describe([relight(face.chip, s, kind)])[0]
        before = np.linalg.norm(lit - v)
        after = np.linalg.norm(project(lit, basis) - project(v, basis))
        assert after < before, (kind, s, before, after)


def test_a_large_gallery_learns_from_evenly_spaced_faces():
    from vitrina.faces.light_projection import spaced

    assert spaced(list(range(5)), 10) == [0, 1, 2, 3, 4]
    picked = spaced(list(range(1000)), 300)
    assert len(picked) == 300 == len(set(picked)) and picked[0] == 0 and picked[-1] == 999
    assert max(np.diff(picked)) - min(np.diff(picked)) <= 1
