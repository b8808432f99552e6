"""Annotated photos: COCO JSON, YOLO txt and Pascal VOC XML found and read the same, in both
layouts; conversions round-trip; bad input is named, skipped, counted; the CLI reports it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import one_line_error, run_cli
from detect_util import CLASSES, make_shapes, write_coco, write_voc, write_yolo
from vitrina.data.annotations import (
    convert_annotated,
    detect_layout,
    has_annotations,
    read_annotated,
    read_class_list,
)
from vitrina.errors import DataError


def _by_name(s):
    return {Path(p.rel).name: p for p in s.photos}


def _same(shots, s, atol=1e-3):
    got = _by_name(s)
    assert len(got) == len(shots)
    for shot in shots:
        p = got[shot.path.name]
        assert p.size == shot.size
        order_a = np.lexsort(shot.boxes.T[::-1])
        order_b = np.lexsort(p.boxes.T[::-1])
        np.testing.assert_allclose(p.boxes[order_b], shot.boxes[order_a], atol=atol)
        assert p.labels[order_b].tolist() == shot.labels[order_a].tolist()


@pytest.fixture
def shots(tmp_path: Path):
    return make_shapes(tmp_path / "made", 8, seed=3, empty_every=4)


def test_three_formats_read_the_same_boxes(tmp_path: Path, shots) -> None:
    # VOC in parallel trees (images/<aisle>/..., annotations/<aisle>/...), classes.txt
    voc = tmp_path / "voc"
    for s in shots:
        (voc / "images" / "aisle1").mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, voc / "images" / "aisle1" / s.path.name)
    write_voc(shots, voc / "annotations" / "aisle1")
    (voc / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    # YOLO side by side, class names in data.yaml
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    for s in shots:
        shutil.copy(s.path, yolo / s.path.name)
    write_yolo(shots, yolo)
    (yolo / "data.yaml").write_text("path: .\nnames:\n  0: can\n  1: box\n  2: bottle\n")
    # COCO: annotations/instances.json beside images/
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    for s in shots:
        shutil.copy(s.path, coco / "images" / s.path.name)
    write_coco(shots, coco / "annotations" / "instances.json", tmp_path / "made")

    for folder, fmt in ((voc, "voc"), (yolo, "yolo"), (coco, "coco")):
        assert has_annotations(folder)
        assert detect_layout(folder).format == fmt
        s = read_annotated(folder)
        assert s.format == fmt and s.classes == list(CLASSES)
        assert not s.problems, s.problems
        _same(shots, s)
        assert {p.rel for p in s.empty_photos()} == {
            p.rel for p in s.photos if not len(p.boxes)
        } and len(s.empty_photos()) == 2
    assert Path(read_annotated(voc).photos[0].rel).parts[0] == "aisle1"  # relative paths kept
    # A COCO file given directly.
    assert read_annotated(coco / "annotations" / "instances.json").format == "coco"
    # A folder of class folders is not annotated photos.
    plain = tmp_path / "plain" / "cans"
    plain.mkdir(parents=True)
    shutil.copy(shots[0].path, plain / "a.png")
    assert not has_annotations(tmp_path / "plain")


def test_yolo_parallel_trees_and_class_lists(tmp_path: Path, shots) -> None:
    root = tmp_path / "set"
    (root / "images" / "train").mkdir(parents=True)
    for s in shots:
        shutil.copy(s.path, root / "images" / "train" / s.path.name)
    write_yolo(shots, root / "labels" / "train")
    (root / "obj.names").write_text("can\nbox\nbottle\n")
    s = read_annotated(root)
    assert s.format == "yolo" and s.classes == list(CLASSES)
    _same(shots, s)
    # Without a class list the classes are numbers (and the report says so).
    (root / "obj.names").unlink()
    s = read_annotated(root)
    assert s.classes == ["0", "1", "2"] and any("named by number" in n for n in s.notes)
    # One given explicitly wins, as names or as a file.
    assert read_annotated(root, classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    (tmp_path / "names.txt").write_text("x\ny\nz\n")
    assert read_annotated(root, classes=tmp_path / "names.txt").classes == ["x", "y", "z"]
    assert read_class_list(tmp_path / "names.txt") == ["x", "y", "z"]
    (tmp_path / "flow.yaml").write_text("nc: 2\nnames: ['shelf', 'price tag']\n")
    assert read_class_list(tmp_path / "flow.yaml") == ["shelf", "price tag"]
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="listed twice"):
        read_class_list(tmp_path / "twice.txt")


@pytest.mark.parametrize("chain", [("coco", "yolo", "voc"), ("yolo", "voc", "coco")])
def test_conversions_round_trip(tmp_path: Path, shots, chain) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for s in shots:
        shutil.copy(s.path, src / s.path.name)
    write_voc(shots, src)
    (src / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    current = src
    for k, fmt in enumerate(chain):
        out = tmp_path / f"step{k}-{fmt}"
        res = convert_annotated(current, out, fmt)
        assert res.format == fmt and res.photos == len(shots)
        assert read_annotated(out).format == fmt
        current = out
    back = read_annotated(current)
    assert back.classes == list(CLASSES)
    _same(shots, back, atol=2e-3)  # YOLO keeps 6 decimals of a fraction: < 0.001 px here
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # sources only read
    # Photos are copies with the same bytes, at the same relative paths.
    assert (current / "images" / shots[0].path.name).read_bytes() == shots[0].path.read_bytes()


def test_convert_never_overwrites(tmp_path: Path, shots) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for s in shots:
        shutil.copy(s.path, src / s.path.name)
    write_yolo(shots, src)
    (src / "classes.txt").write_text("\n".join(CLASSES))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an empty folder"):
        convert_annotated(src, taken, "coco")
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    linked = convert_annotated(src, tmp_path / "linked", "voc", photos="link")
    first = linked.out / "images" / shots[0].path.name
    assert first.is_symlink() and first.resolve() == (src / shots[0].path.name).resolve()


def _bad_set(tmp_path: Path, shots) -> Path:
    """A VOC set with one of every problem real annotations have."""
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    for s in shots:
        shutil.copy(s.path, root / "images" / s.path.name)
    write_voc(shots, root / "annotations")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    ann = root / "annotations"
    w0, h0 = shots[0].size
    extra = (
        f"<object><name>box</name><bndbox><xmin>{w0 + 10}</xmin><ymin>5</ymin>"
        f"<xmax>{w0 + 50}</xmax><ymax>40</ymax></bndbox></object>"  # outside the photo
        "<object><name>box</name><bndbox><xmin>30</xmin><ymin>30</ymin>"
        "<xmax>30</xmax><ymax>60</ymax></bndbox></object>"  # zero width
        "<object><name>crate</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>20</xmax><ymax>20</ymax></bndbox></object>"  # not in classes.txt
        f"<object><name>can</name><bndbox><xmin>-30</xmin><ymin>{h0 - 40}</ymin>"
        f"<xmax>40</xmax><ymax>{h0 + 25}</ymax></bndbox></object>"  # reaches past two edges
    )
    first = ann / f"{shots[0].path.stem}.xml"
    first.write_text(first.read_text().replace("</annotation>", extra + "</annotation>"))
    (ann / f"{shots[1].path.stem}.xml").write_text("<annotation><object><name>can</nam")
    (root / "images" / shots[2].path.name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (ann / "ghost.xml").write_text("<annotation></annotation>")  # no such photo
    return root


def test_bad_annotations_are_named_skipped_counted(tmp_path: Path, shots) -> None:
    root = _bad_set(tmp_path, shots)
    s = read_annotated(root)
    counts = s.problem_counts()
    assert counts == {
        "unreadable photo": 1,
        "corrupt annotation": 1,
        "unknown class": 1,
        "zero-size box": 1,
        "box outside the photo": 1,
        "clipped box": 1,
        "annotation without photo": 1,
    }, counts
    msgs = {p.kind: p.message for p in s.problems}
    assert shots[0].path.stem in msgs["zero-size box"] and "no width" in msgs["zero-size box"]
    assert "'crate' is not in the class list" in msgs["unknown class"]
    assert "outside" in msgs["box outside the photo"]
    assert shots[1].path.stem in msgs["corrupt annotation"]
    assert shots[2].path.name in msgs["unreadable photo"]
    assert "ghost.xml" in msgs["annotation without photo"]
    for p in s.problems:
        assert "\n" not in p.message
    # The rest is read: the clipped box kept inside the photo, the good boxes all there.
    assert len(s.photos) == len(shots) - 1  # the unreadable photo is left out
    first = _by_name(s)[shots[0].path.name]
    _w0, h0 = shots[0].size
    assert len(first.boxes) == len(shots[0].boxes) + 1
    clipped = first.boxes[-1]
    assert clipped.tolist() == [0.0, h0 - 40, 40.0, float(h0)]
    assert not len(_by_name(s)[shots[1].path.name].boxes)  # corrupt file: no boxes, photo kept


def test_bad_yolo_and_coco_files(tmp_path: Path, shots) -> None:
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    for s in shots[:3]:
        shutil.copy(s.path, yolo / s.path.name)
    write_yolo(shots[:3], yolo)
    (yolo / "classes.txt").write_text("can\nbox\nbottle\n")
    lbl = yolo / f"{shots[0].path.stem}.txt"
    lbl.write_text(lbl.read_text() + "7 0.5 0.5 0.1 0.1\nnot a row\n")
    s = read_annotated(yolo)
    assert s.problem_counts() == {"corrupt annotation": 1, "unknown class": 1}
    assert any("line" in p.message and "class 7" in p.message for p in s.problems)
    assert sum(len(p.boxes) for p in s.photos) == sum(len(x.boxes) for x in shots[:3])

    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    for s in shots[:3]:
        shutil.copy(s.path, coco / "images" / s.path.name)
    write_coco(shots[:3], coco / "annotations.json", tmp_path / "made")
    d = json.loads((coco / "annotations.json").read_text())
    d["annotations"].append({"id": 99, "image_id": 100, "category_id": 42, "bbox": [1, 1, 5, 5]})
    d["annotations"].append({"id": 98, "image_id": 100, "category_id": 7, "bbox": "oops"})
    d["images"].append({"id": 555, "file_name": "missing.png", "width": 10, "height": 10})
    (coco / "annotations.json").write_text(json.dumps(d))
    s = read_annotated(coco)
    assert s.problem_counts() == {
        "corrupt annotation": 1,
        "unknown class": 1,
        "annotation without photo": 1,
    }
    (coco / "annotations.json").write_text('{"images": [ {"id": 1,')
    with pytest.raises(DataError, match=r"annotations\.json: not a readable COCO file"):
        read_annotated(coco)


def test_empty_and_unannotated_folders_are_one_line_errors(tmp_path: Path, capsys, shots) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no photos found"):
        read_annotated(empty)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(shots[0].path, bare / "a.png")
    with pytest.raises(DataError, match=r"no COCO \.json, YOLO \.txt or Pascal VOC \.xml"):
        read_annotated(bare)
    mismatched = tmp_path / "mismatched"
    (mismatched / "images").mkdir(parents=True)
    (mismatched / "annotations").mkdir()
    shutil.copy(shots[0].path, mismatched / "images" / "a.png")
    (mismatched / "annotations" / "b.xml").write_text("<annotation/>")
    with pytest.raises(DataError, match="none matches a photo"):
        read_annotated(mismatched)
    code, _, err = run_cli(capsys, "data", "convert", empty, tmp_path / "out", "--to", "coco")
    assert code == 1
    one_line_error(err, str(empty), "no photos found")
    code, _, err = run_cli(capsys, "detect", "train", tmp_path / "missing")
    assert code == 1
    one_line_error(err, "missing", "folder not found")


def test_inspect_and_convert_commands(tmp_path: Path, capsys, shots) -> None:
    root = _bad_set(tmp_path, shots)
    code, out, err = run_cli(capsys, "data", "inspect", root)
    assert code == 0, err
    assert "photos" in out and "boxes" in out and "(voc)" in out
    for name in CLASSES:
        assert name in out
    assert "1 zero-size box" in out and "1 box outside the photo" in out
    assert "1 unknown class" in out and "ghost.xml" in out
    assert "photos without boxes" in out
    code, out, _ = run_cli(capsys, "data", "inspect", root, "--json")
    report = json.loads(out)
    assert report["format"] == "voc" and report["problem_counts"]["clipped box"] == 1
    assert report["boxes"] == sum(report["boxes_per_class"].values())
    code, out, err = run_cli(capsys, "data", "convert", root, tmp_path / "as-coco", "--to", "coco")
    assert code == 0, err
    assert "voc -> coco" in out and "skipped" in err and "ghost.xml" in err
    assert read_annotated(tmp_path / "as-coco").problems == []
    code, _, err = run_cli(capsys, "data", "convert", root, tmp_path / "as-coco", "--to", "yolo")
    assert code == 1
    one_line_error(err, "as-coco", "not an empty folder")
    # A class-folder tree still gets the class report.
    plain = tmp_path / "plain"
    for k, s in enumerate(shots[:4]):
        (plain / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, plain / f"c{k % 2}" / s.path.name)
    code, out, _ = run_cli(capsys, "data", "inspect", plain)
    assert code == 0 and "4 images in 2 classes" in out
