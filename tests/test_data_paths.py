"""vitrina.data.expand_image_paths: the photos named on a command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import COLORS, make_image
from vitrina.data import expand_image_paths
from vitrina.errors import DataError


def test_files_as_given_folders_expanded_in_argument_order(tmp_path: Path) -> None:
    b = make_image(tmp_path / "f" / "b.png", COLORS["blue"])
    a = make_image(tmp_path / "f" / "a.jpg", COLORS["red"])
    deep = make_image(tmp_path / "f" / "sub" / "c.png", COLORS["green"])
    make_image(tmp_path / "f" / ".hidden.png", COLORS["green"])
    (tmp_path / "f" / "notes.txt").write_text("not a photo")
    loose = make_image(tmp_path / "loose.png", COLORS["red"])
    assert expand_image_paths([loose, tmp_path / "f"]) == [loose, a, b, deep]
    assert expand_image_paths([tmp_path / "f", loose], recursive=False) == [a, b, loose]
    assert expand_image_paths([str(b), str(b)]) == [b, b]  # as given, repeats too
    assert expand_image_paths([]) == []


def test_a_missing_path_stops_before_any_work(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", COLORS["red"])
    with pytest.raises(DataError, match=r"typo\.png: no such file or folder"):
        expand_image_paths([tmp_path / "a.png", tmp_path / "typo.png"])


def test_a_broken_link_is_kept_for_the_reader_to_report(tmp_path: Path) -> None:
    link = tmp_path / "gone.png"
    os.symlink(tmp_path / "deleted.png", link)
    assert expand_image_paths([link]) == [link]
