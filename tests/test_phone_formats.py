"""Photos as phones make them: HEIC (pillow-heif) and AVIF (Pillow), with their EXIF
orientation, through every reader: read_image, read_image_bytes, image_size, the folder
scanners, prediction and sorting. The files are written here, by the same libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLORS
from vitrina.data import scan_folder
from vitrina.errors import ImageReadError
from vitrina.io import (
    IMAGE_EXTENSIONS,
    IMAGE_EXTENSIONS_TEXT,
    image_size,
    is_image_path,
    read_image,
    read_image_bytes,
)

pillow_heif = pytest.importorskip("pillow_heif")
pillow_heif.register_heif_opener()  # only for writing the test files
PHONE = (".heic", ".avif")


def landscape() -> np.ndarray:
    """80 wide x 40 high: red left half, blue right half (as the sensor stored it)."""
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = (230, 20, 20)
    a[:, 40:] = (20, 20, 230)
    return a


def save(a: np.ndarray, path: Path, orientation: int = 1) -> Path:
    """``a`` written as ``path`` (format from the suffix) with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=92)
    return path


def test_the_extensions_are_one_list_and_messages_use_it() -> None:
    for ext in (".heic", ".heif", ".avif"):
        assert ext in IMAGE_EXTENSIONS and is_image_path(f"IMG_0001{ext.upper()}")
        assert ext in IMAGE_EXTENSIONS_TEXT
    assert IMAGE_EXTENSIONS_TEXT.split(", ") == sorted(IMAGE_EXTENSIONS)


@pytest.mark.parametrize("suffix", [*PHONE, ".jpg"])
@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
def test_phone_photos_are_read_upright(tmp_path: Path, suffix: str, orientation: int) -> None:
    """Orientation 6 (the phone held upright, rotated 90 degrees clockwise for display) makes
    the stored 80x40 landscape a 40x80 portrait with red on top; 8 the other way round; 3
    upside down. The JPEG is the reference every viewer agrees on."""
    path = save(landscape(), tmp_path / f"photo{suffix}", orientation)
    im = read_image(path)
    a = np.asarray(im).astype(int)
    expected = {1: (80, 40), 3: (80, 40), 6: (40, 80), 8: (40, 80)}[orientation]
    assert im.size == expected and image_size(path) == expected
    first, last = (a[3, 3], a[-4, -4])  # top-left and bottom-right pixels
    red_first = orientation in (1, 6)  # 6: the left (red) half rotates to the top
    red, blue = (first, last) if red_first else (last, first)
    assert red[0] > 180 and red[2] < 70, (suffix, orientation, red)
    assert blue[2] > 180 and blue[0] < 70, (suffix, orientation, blue)
    # the same bytes in memory (an HTTP upload) decode alike
    same = read_image_bytes(path.read_bytes(), name=path.name)
    assert same.size == expected
    np.testing.assert_array_equal(np.asarray(same), np.asarray(im))


@pytest.mark.parametrize("suffix", PHONE)
def test_broken_phone_photos_are_one_line_errors(tmp_path: Path, suffix: str) -> None:
    good = save(landscape(), tmp_path / f"good{suffix}").read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\{suffix}: ") as info:
        read_image(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageReadError):
        read_image_bytes(good[:40], name=f"upload{suffix}")


def test_grey_and_alpha_phone_photos(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(grey).save(tmp_path / "grey.avif", quality=95)
    assert read_image(tmp_path / "grey.avif", mode="L").size == (64, 16)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1] = 200  # green, fully transparent: composited over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.heic", quality=95)
    a = np.asarray(read_image(tmp_path / "clear.heic")).astype(int)
    assert a.min() > 230  # white, not the hidden green or black


def test_scanners_find_phone_photos_and_the_classifier_sorts_them_like_a_png(
    tmp_path: Path, toy_run: Path
) -> None:
    from vitrina.classify import load, sort_folder

    photos = tmp_path / "phone"
    for name, rgb in COLORS.items():
        a = np.full((48, 64, 3), rgb, np.uint8)
        save(a, photos / f"{name}.png")
        for suffix in PHONE:
            save(a, photos / f"{name}{suffix}", orientation=6)
    clf = load(toy_run)
    preds = clf.predict(sorted(photos.iterdir()))
    by_stem: dict[str, set[str | None]] = {}
    for p in preds:
        assert p.error is None, p.error
        by_stem.setdefault(Path(p.path).stem, set()).add(p.label)
    assert by_stem == {name: {name} for name in COLORS}  # each colour: one label, its own

    summary = sort_folder(photos, clf, tmp_path / "sorted", min_confidence=0.0)
    assert not summary.unreadable and not summary.errors and summary.skipped_non_image == 0
    for name in COLORS:
        got = sorted(p.name for p in (tmp_path / "sorted" / name).iterdir())
        assert got == sorted(f"{name}{s}" for s in (".png", *PHONE))

    train = tmp_path / "train"
    for name, rgb in COLORS.items():
        save(np.full((32, 32, 3), rgb, np.uint8), train / name / "a.heic")
        save(np.full((32, 32, 3), rgb, np.uint8), train / name / "b.avif")
    scan = scan_folder(train)
    assert len(scan.samples) == 6 and sorted(scan.classes) == sorted(COLORS)


def test_a_heic_photo_without_pillow_heif_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pillow-heif is missing (a trimmed install), the error names the package."""
    import vitrina.io.images as images

    path = save(landscape(), tmp_path / "IMG_0001.HEIC")
    monkeypatch.setattr(images, "_heif_state", [False])
    monkeypatch.setattr(images, "_FORMATS", tuple(f for f in images._FORMATS if f != "HEIF"))
    with pytest.raises(ImageReadError, match="pip install pillow-heif"):
        read_image(path)
