"""Faces half in shadow: the chip corrections of :mod:`vitrina.faces.lighting` (column-gain
flattening, the pipeline's ``flatten_chips``; mirror symmetrisation, measured and not used) and
the fingerprint that keeps galleries of corrected and plain vectors apart.

Chips are made here: a textured, evenly lit 150x150 "face" and the same darkened on one side by
:func:`~vitrina.faces.lighting.relight`; the pipeline tests use scikit-image's astronaut.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitrina.faces.gallery import Gallery, GalleryError
from vitrina.faces.lighting import (
    SHADOW_FULL,
    SHADOW_ONSET,
    flatten_shading,
    imbalance,
    relight,
    symmetrise,
)
from vitrina.faces.pipeline import FacePipeline


@pytest.fixture(scope="module")
def chip() -> np.ndarray:
    """An evenly lit, textured chip: mid-grey with smooth blobs (features) and fine noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:150] / 150.0
    lum = 120 + 40 * np.sin(9 * x) * np.cos(7 * y) + rng.normal(0, 6, (150, 150))
    g = np.clip(lum, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def test_imbalance_tells_a_shadowed_chip_from_an_evenly_lit_one(chip):
    assert imbalance(chip) < 0.05
    assert imbalance(relight(chip, 0.7, "left")) > SHADOW_FULL
    assert imbalance(relight(chip, 0.7, "right")) > SHADOW_FULL


@pytest.mark.parametrize("fix", [flatten_shading, symmetrise])
def test_evenly_lit_chips_are_left_exactly_as_they_are(chip, fix):
    assert imbalance(chip) < SHADOW_ONSET
    out = fix(chip)
    np.testing.assert_array_equal(out, chip)
    assert out is not chip  # a copy: the caller's array is never changed


@pytest.mark.parametrize("side", ["left", "right"])
def test_symmetrise_rebuilds_the_dark_half_from_the_mirrored_lit_half(chip, side):
    dark = relight(chip, 0.8, side)  # imbalance past SHADOW_FULL: replaced completely
    before = dark.copy()
    out = symmetrise(dark)
    np.testing.assert_array_equal(dark, before)  # input untouched
    half = slice(0, 75) if side == "left" else slice(75, 150)
    lit = slice(75, 150) if side == "left" else slice(0, 75)
    np.testing.assert_array_equal(out[:, half], dark[:, ::-1][:, half])
    np.testing.assert_array_equal(out[:, lit], dark[:, lit])
    assert imbalance(out) < 0.02


def test_symmetrise_blends_in_between_onset_and_full(chip):
    """A mild shadow is blended, not replaced: the dark half moves part of the way."""
    dark = relight(chip, 0.55, "left")
    w = (imbalance(dark) - SHADOW_ONSET) / (SHADOW_FULL - SHADOW_ONSET)
    assert 0 < w < 1  # the premise
    out = symmetrise(dark).astype(float)
    lo, hi = dark[:, :75].astype(float), dark[:, ::-1][:, :75].astype(float)
    np.testing.assert_allclose(out[:, :75], (1 - w) * lo + w * hi, atol=0.51)


@pytest.mark.parametrize("side", ["left", "right"])
def test_flatten_shading_brings_the_shadowed_half_back_towards_the_lit_face(chip, side):
    dark = relight(chip, 0.7, side)
    out = flatten_shading(dark)
    assert out.shape == chip.shape and out.dtype == np.uint8
    assert imbalance(out) < 0.1 < SHADOW_ONSET < imbalance(dark)
    # the shadowed half: closer to the evenly lit chip (in brightness and in pattern)
    half = slice(10, 65) if side == "left" else slice(85, 140)
    err_dark = np.abs(dark[:, half].astype(float) - chip[:, half]).mean()
    err_out = np.abs(out[:, half].astype(float) - chip[:, half]).mean()
    assert err_out < 0.4 * err_dark
    corr = np.corrcoef(out[:, half, 0].ravel(), chip[:, half, 0].ravel())[0, 1]
    assert corr > 0.9


def _top_bottom(a: np.ndarray) -> float:
    return imbalance(np.ascontiguousarray(np.swapaxes(a, 0, 1)))


def test_flatten_shading_rows_evens_out_a_light_from_above(chip):
    """``rows=True``: the same correction down the chip (a ceiling lamp: brow lit, chin in
    shadow); a chip lit evenly top to bottom, or lit from one side, keeps its rows."""
    dark = relight(chip, 0.7, "top")
    out = flatten_shading(dark, rows=True)
    assert out.shape == chip.shape and out.dtype == np.uint8
    assert _top_bottom(out) < 0.1 < SHADOW_ONSET < _top_bottom(dark)
    err_dark = np.abs(dark[85:140].astype(float) - chip[85:140]).mean()
    assert np.abs(out[85:140].astype(float) - chip[85:140]).mean() < 0.4 * err_dark
    np.testing.assert_array_equal(flatten_shading(chip, rows=True), chip)
    side = relight(chip, 0.7, "left")
    np.testing.assert_array_equal(flatten_shading(side, rows=True), side)
    # the rows of a chip are the columns of its transpose
    t = np.ascontiguousarray(np.swapaxes(dark, 0, 1))
    np.testing.assert_array_equal(
        flatten_shading(dark, rows=True), np.swapaxes(flatten_shading(t), 0, 1)
    )


def test_corrections_refuse_a_bad_ramp(chip):
    with pytest.raises(ValueError, match="onset"):
        flatten_shading(chip, onset=0.5, full=0.4)


# --------------------------------------------------------------------------- the pipeline


def test_flattened_vectors_have_their_own_fingerprint_and_old_settings_mean_off():
    plain, flat = FacePipeline(backend="eager"), FacePipeline(backend="eager", flatten_chips=True)
    both = FacePipeline(backend="eager", flatten_chips=True, equalise_chips=True)
    clahe = FacePipeline(backend="eager", equalise_chips=True)
    prints = {p.fingerprint for p in (plain, flat, both, clahe)}
    assert len(prints) == 4
    assert FacePipeline(**flat.settings()).fingerprint == flat.fingerprint
    # settings stored by galleries made before the option: no key, the vectors of then
    old = {k: v for k, v in plain.settings().items() if k != "flatten_chips"}
    assert FacePipeline(**old).fingerprint == plain.fingerprint
    assert FacePipeline(**old).flatten_chips is False


def test_flattened_rows_have_their_own_fingerprint_and_old_galleries_keep_columns_only(
    tmp_path,
):
    """``flatten_chips`` evens out the rows too in new pipelines (``-flat-rows``); a gallery
    made with ``flatten_chips`` before recorded no ``flatten_rows``: columns only, ``-flat``."""
    rows = FacePipeline(backend="eager", flatten_chips=True)
    cols = FacePipeline(backend="eager", flatten_chips=True, flatten_rows=False)
    assert rows.flatten_rows is True and cols.flatten_rows is False
    assert FacePipeline(backend="eager").flatten_rows is False  # nothing to flatten
    assert rows.fingerprint != cols.fingerprint
    g = Gallery.for_pipeline(tmp_path / "old", cols)
    meta = json.loads((g.path / "gallery.json").read_text())
    del meta["pipeline"]["flatten_rows"]  # as written before 6 December 2026
    (g.path / "gallery.json").write_text(json.dumps(meta))
    old = Gallery(g.path).pipeline()
    assert old.flatten_chips is True and old.flatten_rows is False
    assert old.fingerprint == cols.fingerprint
    new = Gallery.for_pipeline(tmp_path / "new", rows)
    assert Gallery(new.path).pipeline().flatten_rows is True


def test_a_gallery_keeps_flattened_and_plain_vectors_apart(tmp_path):
    flat = FacePipeline(backend="eager", flatten_chips=True)
    g = Gallery.for_pipeline(tmp_path / "g", flat)
    assert Gallery(g.path).pipeline().flatten_chips is True
    plain = FacePipeline(backend="eager")
    with pytest.raises(GalleryError, match="fingerprint"):
        g.enroll("x", [], fingerprint=plain.fingerprint)
    with pytest.raises(GalleryError, match="fingerprint"):
        g.identify([], fingerprint=plain.fingerprint)


skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[30:230, 120:320])


def test_flatten_chips_evens_out_a_ceiling_lamp_row_by_row(crop):
    """Lit hard from above: the chip the pipeline describes is the plain chip flattened by
    columns, then by rows; a gallery of columns only describes it without the rows."""
    plain = FacePipeline(backend="eager", flatten_landmarks=True)
    rows = FacePipeline(backend="eager", flatten_chips=True)
    cols = FacePipeline(backend="eager", flatten_chips=True, flatten_rows=False)
    lamp = relight(crop, 0.9, "top")
    (a,), (b,), (c,) = plain.faces_in(lamp), rows.faces_in(lamp), cols.faces_in(lamp)
    assert _top_bottom(a.chip) > SHADOW_FULL
    np.testing.assert_array_equal(b.chip, flatten_shading(flatten_shading(a.chip), rows=True))
    np.testing.assert_array_equal(c.chip, flatten_shading(a.chip))
    assert not np.array_equal(b.chip, c.chip)


def test_flatten_chips_changes_only_shadowed_faces(crop):
    """The astronaut in her own light: the same chip and vector as the plain pipeline; lit
    hard from the left: the chip the plain pipeline makes, flattened."""
    plain = FacePipeline(backend="eager")
    flat = FacePipeline(backend="eager", flatten_chips=True)
    (a,), (b,) = plain.faces_in(crop), flat.faces_in(crop)
    np.testing.assert_array_equal(a.chip, b.chip)
    np.testing.assert_allclose(a.vector, b.vector, atol=1e-6)
    shaded = relight(crop, 0.85, "left")
    (c,), (d,) = plain.faces_in(shaded), flat.faces_in(shaded)
    assert imbalance(c.chip) > SHADOW_ONSET
    np.testing.assert_array_equal(d.chip, flatten_shading(c.chip))
    np.testing.assert_allclose(d.vector, plain.describe([d.chip])[0], atol=1e-5)
    assert not np.allclose(c.vector, d.vector, atol=1e-3)


@pytest.mark.slow  # ~45 s: the CLI's backend choice is measured on a fresh gallery
def test_cli_enroll_flatten_chips_makes_a_gallery_that_keeps_it(tmp_path, crop, capsys):
    """``faces enroll --flatten-chips`` stores the option with the gallery (identify then
    flattens too); asking for it on a plain gallery is one clear line, nothing written."""
    from PIL import Image

    from conftest import one_line_error, run_cli

    photo = tmp_path / "eileen.png"
    Image.fromarray(crop).save(photo)
    flat, plain = tmp_path / "flat.gallery", tmp_path / "plain.gallery"
    code, _, err = run_cli(capsys, "faces", "enroll", flat, "eileen", photo, "--flatten-chips")
    assert code == 0, err
    assert Gallery(flat).pipeline().flatten_chips is True
    code, out, err = run_cli(capsys, "faces", "identify", flat, photo, "--json")
    assert code == 0, err
    assert '"eileen"' in out
    assert run_cli(capsys, "faces", "enroll", plain, "eileen", photo)[0] == 0
    before = (plain / "gallery.json").read_bytes()
    code, _, err = run_cli(capsys, "faces", "enroll", plain, "eve", photo, "--flatten-chips")
    assert code == 1
    one_line_error(err, "fingerprint")
    assert (plain / "gallery.json").read_bytes() == before
