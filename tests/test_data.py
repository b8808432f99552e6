from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import make_dataset, make_image
from vitrina.data import (
    ImageFiles,
    collate_skip_bad,
    inspect_folder,
    scan_folder,
    stratified_split,
)
from vitrina.errors import DataError


def test_scan_counts_and_skips(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", per_class=4)
    (root / "red" / ".hidden.png").write_bytes(b"x")
    (root / "red" / "readme.txt").write_text("hi")
    (root / ".git").mkdir()
    make_image(root / "blue" / "nested" / "deep.png", (0, 0, 255))
    scan = scan_folder(root)
    assert scan.classes == ["blue", "green", "red"]
    assert scan.counts() == {"blue": 5, "green": 4, "red": 4}
    assert scan.skipped_hidden == 2
    assert [p.name for p in scan.skipped_non_image] == ["readme.txt"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "folder not found"),
        (lambda p: p.mkdir(), "no images in class sub-folders"),
        (lambda p: make_image(p / "only" / "a.png", (1, 2, 3)), "only 1 class"),
    ],
)
def test_scan_bad_folders(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(DataError, match=message) as e:
        scan_folder(root, min_classes=2)
    assert str(root) in str(e.value)


def test_split_is_stratified_seeded_and_disjoint(tmp_path: Path) -> None:
    scan = scan_folder(make_dataset(tmp_path / "d", per_class=10))
    tr, va = stratified_split(scan.samples, 0.2, seed=1)
    assert Counter(s.label for s in va) == {0: 2, 1: 2, 2: 2}
    assert not {s.path for s in tr} & {s.path for s in va}
    assert len(tr) + len(va) == 30
    assert stratified_split(scan.samples, 0.2, seed=1) == (tr, va)
    assert stratified_split(scan.samples, 0.2, seed=2)[1] != va


def test_split_keeps_tiny_classes_in_training(tmp_path: Path) -> None:
    scan = scan_folder(make_dataset(tmp_path / "d", per_class=2))
    tr, va = stratified_split(scan.samples, 0.2, seed=0)
    assert Counter(s.label for s in tr) == {0: 1, 1: 1, 2: 1}
    assert Counter(s.label for s in va) == {0: 1, 1: 1, 2: 1}


def test_explicit_class_order_and_unknown_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", per_class=1)
    scan = scan_folder(root, classes=["red", "green", "blue", "yellow"])
    assert scan.counts() == {"red": 1, "green": 1, "blue": 1, "yellow": 0}
    with pytest.raises(DataError, match="'red' is not one of the model's classes"):
        scan_folder(root, classes=["green", "blue"])


def test_bad_file_becomes_error_not_crash(tmp_path: Path) -> None:
    good = make_image(tmp_path / "a.png", (10, 20, 30))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"")
    ds = ImageFiles([good, bad], [0, 1], transform=lambda im: torch.zeros(3, 4, 4))
    batch = collate_skip_bad([ds[0], ds[1]])
    assert batch.images.shape == (1, 3, 4, 4)
    assert batch.labels.tolist() == [0]
    assert batch.errors[0][0] == 1 and "b.jpg" in batch.errors[0][1]


def test_inspect_finds_duplicates_unreadable_and_sizes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", per_class=3)
    src = root / "red" / "red-00.jpg"
    (root / "blue" / "copy-of-red.jpg").write_bytes(src.read_bytes())
    (root / "green" / "zero.png").write_bytes(b"")
    rep = inspect_folder(root)
    assert rep.classes == {"blue": 4, "green": 4, "red": 3}
    assert [sorted(p.name for p in g) for g in rep.duplicates] == [
        ["copy-of-red.jpg", "red-00.jpg"]
    ]
    assert [(p.name, "empty" in why) for p, why in rep.unreadable] == [("zero.png", True)]
    assert rep.size_stats()["width"] == {"min": 40, "median": 40, "max": 40}
