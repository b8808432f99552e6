"""What `make fuzz` found, kept as files in tests/fuzz_regressions/ and run through the same
oracles as the fuzz targets (fuzz/*.py); plus every generated seed, so the harness itself
stays true (a seed that fails would stop every fuzz run at its first input)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUND = Path(__file__).resolve().parent / "fuzz_regressions"

pytest.importorskip("atheris")  # the dev extra installs it; the targets import it


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    import atheris

    sys.path.insert(0, str(ROOT / "fuzz"))
    instrument = atheris.instrument_imports
    atheris.instrument_imports = lambda **kw: contextlib.nullcontext()  # coverage: fuzzing only
    try:
        common = importlib.import_module("_common")
        common.CHECK_KNOWN = True  # here every oracle is on, known defects included
        names = ("fuzz_images", "fuzz_upload", "fuzz_names", "fuzz_annotations")
        mods = {n: importlib.import_module(n) for n in names}
        for m in mods.values():
            m.CHECK_KNOWN = True
        # the targets' scratch files go under pytest's tmp (xdist workers never run atexit)
        mods["fuzz_images"]._TMP = str(tmp_path_factory.mktemp("fuzz-images"))
        mods["fuzz_annotations"]._ROOT = tmp_path_factory.mktemp("fuzz-annotations")
        seeds = common.write_image_seeds(tmp_path_factory.mktemp("seeds"))
        seeds += common.write_annotation_seeds(tmp_path_factory.mktemp("annotation-seeds"))
        yield mods, seeds
    finally:
        atheris.instrument_imports = instrument
        sys.path.remove(str(ROOT / "fuzz"))


def test_every_seed_passes_every_image_oracle(targets) -> None:
    mods, seeds = targets
    for seed in seeds:
        data = seed.read_bytes()
        if seed.suffix == ".seed":
            continue  # annotation seeds: below
        mods["fuzz_images"].check(data)  # its first byte picks mode / file or bytes / min_side
        mods["fuzz_upload"].check(data)
        mods["fuzz_images"].check(data[: len(data) // 2])  # truncated: refused cleanly


_DEFECT_1 = "issue 13 defect 1: a PNG whose pixel data Pillow refuses becomes a blank image"


@pytest.mark.parametrize(
    "name",
    [p.name for p in sorted(FOUND.glob("defect01-*"))],
)
def test_corrupt_image_found_by_fuzzing_is_refused(targets, name: str) -> None:
    mods, _ = targets
    data = (FOUND / name).read_bytes()
    mods["fuzz_upload"].check(data)
    mods["fuzz_images"].check(data)


_DEFECT_9 = "issue 13 defect 9: names that are valid text but cannot be stored on disk"


def test_name_found_by_fuzzing_is_refused(targets) -> None:
    mods, _ = targets
    mods["fuzz_names"].check((FOUND / "defect09-names-lone-surrogate.bin").read_bytes())


@pytest.mark.parametrize(
    "name",
    ["\U0001f600" * 100, "ab\ud800cd"],
    ids=["100-emoji-400-bytes", "lone-surrogate"],
)
def test_person_names_that_cannot_be_stored_are_refused(name: str) -> None:
    from vitrina.faces.gallery import GalleryError, check_person_name

    with pytest.raises(GalleryError):
        check_person_name(name)


@pytest.mark.parametrize(
    "name",
    ["\U0001f600" * 70, "ab\ud800cd"],
    ids=["70-emoji-280-bytes", "lone-surrogate"],
)
def test_class_names_that_cannot_be_stored_are_refused(name: str) -> None:
    from vitrina.data import check_class_name
    from vitrina.errors import DataError

    with pytest.raises(DataError):
        check_class_name(name)


def test_every_annotation_seed_is_read_whole(targets, tmp_path) -> None:
    """The seeds are valid sets: read without a problem other than the one clipped box."""
    from vitrina.data.annotations import read_annotated

    mods, seeds = targets
    for seed in (s for s in seeds if s.suffix == ".seed"):
        data = seed.read_bytes()
        mods["fuzz_annotations"].check(data)
        root = tmp_path / seed.stem
        target, fmt = mods["fuzz_annotations"].write_case(data, root)
        s = read_annotated(target, fmt=fmt)
        mods["fuzz_annotations"].check_set(s, root)
        assert sum(len(p.boxes) for p in s.photos) >= 1, seed.name
        assert all(pr.kind == "clipped box" for pr in s.problems) or fmt == "yolo", s.problems


@pytest.mark.parametrize("name", [p.name for p in sorted(FOUND.glob("annotations-*"))])
def test_annotation_file_found_by_fuzzing_is_refused_or_read_right(targets, name: str) -> None:
    """Each was a traceback (a list as a COCO id, a width of 'wide' or 'inf', 'categories'
    not a list), a class list that cannot be written back (an empty name, a name twice, a
    line break in a name), or a billion-class list built from one damaged YOLO line."""
    mods, _ = targets
    mods["fuzz_annotations"].check((FOUND / name).read_bytes())


@pytest.mark.parametrize(
    ("kind", "text", "says"),
    [
        ("coco", b'{"images": [], "annotations": [], "categories": 7}', "not a list"),
        (
            "coco",
            b'{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], '
            b'"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}]}',
            "class 'cat' is listed twice",
        ),
        ("yolo-yaml", b"names:\n  0: cat\n  2: dog\n", "with 1 missing"),
        ("yolo-yaml", b"names: [cat, '', dog]\n", "class 1 has an empty name"),
        ("yolo-no-classes", b"999999999 0.5 0.5 0.2 0.2\n", "class number 999999999"),
    ],
)
def test_bad_class_lists_are_one_line_naming_the_file(tmp_path, kind, text, says) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        from _common import write_annotation_set
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    from vitrina.data.annotations import read_annotated
    from vitrina.errors import DataError

    target = write_annotation_set(tmp_path, kind, text)
    with pytest.raises(DataError) as e:
        read_annotated(target, fmt=kind.split("-")[0])
    msg = str(e.value)
    assert says in msg and "\n" not in msg, msg
    assert str(tmp_path) in msg, msg


def test_bad_sizes_a_voc_or_coco_file_states_are_ignored(tmp_path) -> None:
    """'inf' or 'wide' as a stated width: the photo's own size is used, the boxes kept."""
    import sys

    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        from _common import write_annotation_set
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    from vitrina.data.annotations import read_annotated

    voc = (FOUND / "annotations-voc-infinite-width.bin").read_bytes()[1:]
    s = read_annotated(write_annotation_set(tmp_path / "voc", "voc", voc), fmt="voc")
    a = next(p for p in s.photos if p.rel == "a.png")
    assert a.size == (20, 16) and a.boxes.tolist() == [[1, 1, 5, 5]]
    coco = (FOUND / "annotations-coco-width-not-a-number.bin").read_bytes()[1:]
    s = read_annotated(write_annotation_set(tmp_path / "coco", "coco", coco), fmt="coco")
    assert [p.size for p in s.photos] == [(20, 16)]
