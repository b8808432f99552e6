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
        mods = {n: importlib.import_module(n) for n in ("fuzz_images", "fuzz_upload", "fuzz_names")}
        for m in mods.values():
            m.CHECK_KNOWN = True
        seeds = common.write_image_seeds(tmp_path_factory.mktemp("seeds"))
        yield mods, seeds
    finally:
        atheris.instrument_imports = instrument
        sys.path.remove(str(ROOT / "fuzz"))


def test_every_seed_passes_every_image_oracle(targets) -> None:
    mods, seeds = targets
    for seed in seeds:
        data = seed.read_bytes()
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
