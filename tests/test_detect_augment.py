"""Box-aware augmentation of detection training photos: the zoom-out's fill, the mosaic of four
photos (its boxes where its products' pixels are; boxes cut away dropped), and a mosaic item
that meets an unreadable photo. Photos are generated, never shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitrina.data.annotations import AnnotatedPhoto
from vitrina.detect.data import MOSAIC_VISIBLE, BoxAugment, PhotoBoxes, mosaic
from vitrina.detect.task import LETTERBOX_FILL
from vitrina.models import Preprocess

H, W = 48, 64
#: one colour per tile's product (label k is drawn in COLOURS[k]); backgrounds are grey
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])


def _tiles() -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """Four prepared photos (H, W), each a grey field with one product, a flat rectangle of
    its label's colour, at a different place."""
    places = [(4, 6, 30, 40), (30, 10, 60, 30), (10, 20, 26, 44), (36, 2, 62, 46)]
    tiles = []
    for k, (x1, y1, x2, y2) in enumerate(places):
        x = torch.zeros(3, H, W)
        x[:, y1:y2, x1:x2] = COLOURS[k][:, None, None]
        tiles.append((x, np.float32([[x1, y1, x2, y2]]), np.int64([k])))
    return tiles


def _pixels_of(image: torch.Tensor, k: int) -> torch.Tensor:
    """Where ``image`` shows label ``k``'s colour (exactly: only for unresized windows)."""
    return (image - COLOURS[k][:, None, None]).abs().amax(0) < 1e-4


def test_a_whole_mosaic_halves_every_box_into_its_quarter() -> None:
    torch.manual_seed(0)
    image, boxes, labels = mosaic(_tiles(), window=(2.0, 2.0))
    assert image.shape == (3, H, W)
    assert labels.tolist() == [0, 1, 2, 3]
    quarters = ((0, 0), (W / 2, 0), (0, H / 2), (W / 2, H / 2))
    expected = [
        np.float32(b[0]) / 2 + np.float32([dx, dy, dx, dy])
        for (_, b, _), (dx, dy) in zip(_tiles(), quarters, strict=True)
    ]
    np.testing.assert_allclose(boxes, np.stack(expected), atol=1e-4)
    # each product's pixels are inside its box (well inside: the resize blurs the edges)
    for (x1, y1, x2, y2), k in zip(boxes, labels, strict=True):
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        np.testing.assert_allclose(image[:, cy, cx], COLOURS[k], atol=1e-4)


@pytest.mark.parametrize("seed", range(12))
def test_a_mosaic_keeps_the_boxes_whose_products_it_shows(seed: int) -> None:
    """A window of one photo's size (no resizing): every kept box holds its product's pixels
    and no others of them; a product is kept exactly when at least MOSAIC_VISIBLE of it is
    in the window."""
    torch.manual_seed(seed)
    tiles = _tiles()
    image, boxes, labels = mosaic(tiles, window=(1.0, 1.0))
    assert image.shape == (3, H, W)
    for k, (_, b, _) in enumerate(tiles):
        shown = _pixels_of(image, k)
        area = float((b[0, 2] - b[0, 0]) * (b[0, 3] - b[0, 1]))
        kept = k in labels.tolist()
        assert kept == (shown.sum().item() >= MOSAIC_VISIBLE * area), (k, shown.sum(), area)
        if kept:
            x1, y1, x2, y2 = boxes[labels.tolist().index(k)].round().astype(int)
            inside = torch.zeros_like(shown)
            inside[y1:y2, x1:x2] = True
            assert shown.sum() > 0 and not (shown & ~inside).any()
            assert shown[y1:y2, x1:x2].all()


def test_a_mosaic_needs_four_photos_of_one_size() -> None:
    tiles = _tiles()
    with pytest.raises(ValueError, match="4 photos"):
        mosaic(tiles[:3])
    odd = (torch.zeros(3, H + 32, W), *tiles[0][1:])
    with pytest.raises(ValueError, match="one size"):
        mosaic([*tiles[:3], odd])


def test_the_zoom_out_fills_with_the_letterbox_grey() -> None:
    """The light augmentation's zoom-out pads with the grey the letterbox pads with (it
    padded black before 5 Dec 2026: the fill was keyed by names torchvision does not read)."""
    photo = Image.fromarray(np.full((40, 50, 3), 200, np.uint8))
    boxes, labels = np.float32([[5, 5, 20, 30]]), np.int64([1])
    augment = BoxAugment("light")
    zoomed = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out, b, lab = augment(photo, boxes, labels)
        if out.size == photo.size:
            continue
        zoomed += 1
        # the flat photo (its colour jittered) on a canvas of the letterbox's grey
        pixels = np.asarray(out).reshape(-1, 3)
        grey = (pixels == LETTERBOX_FILL).all(1)
        assert grey.sum() >= out.width * out.height - photo.width * photo.height
        assert len(np.unique(pixels[~grey], axis=0)) == 1
        assert lab.tolist() == [1] and b.shape == (1, 4)
    assert zoomed >= 3  # a quarter of the photos are zoomed out


def _photo(path: Path, colour: int) -> AnnotatedPhoto:
    Image.fromarray(np.full((64, 64, 3), colour, np.uint8)).save(path)
    return AnnotatedPhoto(path, path.name, (64, 64), np.float32([[8, 8, 40, 40]]), np.int64([0]))


def test_a_mosaic_item_never_carries_another_photos_error(tmp_path: Path) -> None:
    """--augment mosaic draws other photos into an item: one of them unreadable leaves the item
    as it is (that photo's error is its own item's); an unreadable photo's own item is its
    error, named."""
    good = [_photo(tmp_path / f"{k}.png", 40 * k) for k in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    photos = [*good, AnnotatedPhoto(bad, bad.name, (64, 64), np.float32([[1, 1, 9, 9]]), [0])]
    pre = Preprocess(input_size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    ds = PhotoBoxes(photos, pre, "mosaic")
    torch.manual_seed(0)
    mixed = 0
    for _ in range(30):
        for i in range(3):
            index, x, target, error = ds[(i, (64, 64))]
            assert index == i and error is None and x.shape == (3, 64, 64)
            assert target["boxes"].shape[1] == 4
            mixed += len(target["labels"]) != 1
    assert mixed > 0  # some items are mosaics (with 0 or several boxes)
    index, x, target, error = ds[(3, (64, 64))]
    assert x is None and target is None and "broken.png" in error
