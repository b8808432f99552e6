"""The activation atlas: sampled activations, the direction objective, the grid, the picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_dataset, run_cli
from vitrina.errors import VitrinaError
from vitrina.explain.atlas import (
    _cells_of,
    _patch_box,
    _positions,
    activation_atlas,
    atlas_files,
    layer_activations,
)
from vitrina.explain.featureviz import direction_objective, visualize_directions
from vitrina.models import create


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("tutorial_cnn", num_classes=3).eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("atlas") / "photos", per_class=7)


def test_direction_objective_is_lucids_direction_neuron() -> None:
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 6, 5, 5, generator=g)
    d = torch.randn(2, 6, generator=g)
    centre = out[:, :, 2, 2]
    unit = F.normalize(d, dim=1)
    dot = (centre * unit).sum(1)
    cos = F.cosine_similarity(centre, unit, dim=1).clamp_min(0.1)
    torch.testing.assert_close(direction_objective(out, d, 1.0), (dot * cos).sum())
    torch.testing.assert_close(direction_objective(out, d, 0.0), dot.sum())
    with pytest.raises(VitrinaError, match="direction objective"):
        direction_objective(torch.zeros(2, 3, 4), d)


def test_visualize_directions_climbs_and_is_seeded(model) -> None:
    from vitrina.explain.layers import layer_extractor, to_network_input

    d = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    few = visualize_directions(model, "features.3", d, steps=1, size=24, seed=5)
    many = visualize_directions(model, "features.3", d, steps=40, size=24, seed=5)
    again = visualize_directions(model, "features.3", d, steps=40, size=24, seed=5)
    assert many.shape == (3, 24, 24, 3) and many.min() >= 0 and many.max() <= 1
    np.testing.assert_array_equal(many, again)
    fe = layer_extractor(model, "features.3")

    def objective(images: np.ndarray) -> float:
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        with torch.no_grad():
            return float(direction_objective(fe(to_network_input(model, x))["features.3"], d))

    assert objective(many) > objective(few) + 0.1


def test_layer_activations_are_the_layer_at_the_sampled_positions(model, photos: Path) -> None:
    """The engine's pass equals the plain one: eval transform, FX extractor, index."""
    from vitrina.data.transforms import eval_transform
    from vitrina.explain.layers import layer_extractor
    from vitrina.io import read_image

    paths = sorted(photos.rglob("*.*"))[:5]
    vectors, where, errors, (c, h, w) = layer_activations(
        model, paths, "features.3", positions=4, seed=2, num_workers=0
    )
    assert not errors and (c, h, w) == (16, 10, 10)
    assert vectors.shape == (20, 16) and where.shape == (20, 3)
    fe = layer_extractor(model, "features.3")
    tf = eval_transform(model.preprocess)
    with torch.no_grad():
        maps = fe(torch.stack([tf(read_image(p)) for p in paths]))["features.3"].numpy()
    for v, (i, y, x) in zip(vectors, where, strict=True):
        np.testing.assert_allclose(v, maps[i, :, y, x], atol=1e-5, rtol=1e-5)
        assert 1 <= y <= h - 2 and 1 <= x <= w - 2  # the border is skipped


def test_grid_positions_and_patches_stay_in_bounds() -> None:
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(500, 2)).astype(np.float32)
    xy[0] = (100, -100)  # an outlier lands in a border cell, not outside the grid
    rc = _cells_of(xy, 7)
    assert rc.min() >= 0 and rc.max() <= 6 and tuple(rc[0]) == (6, 6)
    assert len({tuple(r) for r in rc}) > 20
    pos = _positions(6, 6, 100, rng)
    assert len(pos) == 16 and pos.min() == 1 and pos.max() == 4  # all interior positions
    assert len({tuple(p) for p in _positions(20, 20, 9, rng)}) == 9
    for y, x in ((0, 0), (6, 13), (13, 13)):
        x0, y0, x1, y1 = _patch_box(y, x, (14, 14), (224, 224))
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224 and x1 - x0 == 48


def test_atlas_picture_and_json(model, photos: Path, tmp_path: Path) -> None:
    bad = photos / "red" / "zz-broken.png"
    bad.write_bytes(b"not a png")
    try:
        atlas = activation_atlas(
            model,
            sorted(photos.rglob("*.*")),
            "features.3",
            grid=4,
            positions=8,
            min_count=2,
            size=16,
            steps=3,
            tile=24,
            layout="tsne",
            num_workers=0,
        )
    finally:
        bad.unlink()
    assert len(atlas.bad) == 1 and "zz-broken.png" in atlas.bad[0]
    assert atlas.layout.shape == (21 * 8, 2)
    assert 1 <= len(atlas.cells) <= 16 and len(atlas.icons) == len(atlas.cells)
    assert sum(c.count for c in atlas.cells) <= 21 * 8
    for cell in atlas.cells:
        assert cell.count >= 2 and len(cell.patches) == 2
        src, (x0, y0, x1, y1) = cell.patches[0]
        assert Path(src).is_file() and 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    width, height = atlas.image.size
    assert width == 6 + 4 * (24 + 12 + 6) and height == 24 + 4 * 30 + 6


def test_atlas_files_cli(photos: Path, tmp_path: Path, capsys) -> None:
    from vitrina.runs import RunInfo, save_run

    torch.manual_seed(0)
    net = create("tutorial_cnn", num_classes=3).eval()
    run = save_run(
        tmp_path / "run",
        net,
        RunInfo(arch="tutorial_cnn", classes=list("abc"), preprocess=net.preprocess),
    )
    out = tmp_path / "atlas.png"
    args = [
        "explain",
        "atlas",
        run,
        photos,
        "--layer",
        "features.3",
        "--grid",
        "3",
        "--steps",
        "2",
        "--size",
        "16",
        "--positions",
        "6",
        "--layout",
        "tsne",
        "--workers",
        "0",
        "--out",
        out,
    ]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "cells of a 3x3 grid" in stdout and Image.open(out).size[0] > 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["layer"] == "features.3" and doc["settings"]["layout"] == "tsne"
    assert doc["photos"] == 21 and doc["cells"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "file exists" in err  # nothing overwritten
    with pytest.raises(VitrinaError, match="not a feature map"):
        atlas_files(str(run), [photos], "fc.0", tmp_path / "b.png", layout="tsne")


@pytest.mark.slow
def test_atlas_with_umap_is_seeded(model, photos: Path) -> None:
    """UMAP (its first call compiles for about a minute): the same seed, the same atlas."""
    kw = dict(grid=4, positions=8, min_count=2, size=16, steps=2, tile=24, num_workers=0)
    paths = sorted(photos.rglob("*.*"))
    a = activation_atlas(model, paths, "features.3", seed=3, **kw)
    b = activation_atlas(model, paths, "features.3", seed=3, **kw)
    np.testing.assert_array_equal(a.layout, b.layout)
    assert [(c.row, c.col, c.count) for c in a.cells] == [(c.row, c.col, c.count) for c in b.cells]
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
