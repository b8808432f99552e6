"""`sort --move` with a write failure injected into each run: no photo is ever lost, and once
a run completes every photo exists exactly once, with its manifest row.

Each example sorts a few photos (some with names already taken in the output) with
``method="move"``; the first runs get a failure at the n-th os.fsync / link / unlink (EIO,
or ENOSPC: a full disk), the last run none, as a user re-running the same command would. After every run, failed or not, each photo's bytes exist at least once
(sources + output); after the clean run exactly once, no source is left, no temp file
either, and every placed file has a manifest row naming it.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import COLORS, make_image
from faults import Fault, inject
from vitrina.classify.sort import sort_folder
from vitrina.errors import VitrinaError

failures = st.lists(
    st.builds(
        Fault,
        st.sampled_from(("fsync", "link", "unlink")),  # a move's calls (replace: no hard links)
        st.integers(1, 6),
        st.sampled_from((errno.EIO, errno.ENOSPC)),
    ),
    min_size=1,
    max_size=3,
)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _photos(root: Path, n: int, clashes: int) -> tuple[Path, Path, dict[str, str]]:
    src, out = root / "photos", root / "sorted"
    digests = {}
    names = list(COLORS)
    for i in range(n):
        colour = names[i % len(names)]
        p = make_image(src / f"{colour}-{i}.png", COLORS[colour], size=24, seed=7000 + i)
        digests[_digest(p)] = p.name
    for i in range(clashes):  # a different photo already holds the name in every folder
        for folder in (*names, "unsure"):
            make_image(out / folder / f"{names[i % len(names)]}-{i}.png", (9, 9, 9), seed=i)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    digests[_digest(src / "broken.jpg")] = "broken.jpg"
    return src, out, digests


def _everywhere(src: Path, out: Path) -> list[str]:
    files = [p for p in src.iterdir() if p.is_file()]
    files += [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv"]
    return [_digest(p) for p in files]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(n=st.integers(1, 6), clashes=st.integers(0, 2), runs=failures)
def test_move_with_failures_never_loses_or_duplicates(toy_run: Path, n, clashes, runs) -> None:
    root = Path(tempfile.mkdtemp(prefix="vitrina-stateful-sort-"))
    try:
        src, out, digests = _photos(root, n, clashes)
        already = {_digest(p) for p in out.rglob("*.png")}
        for fault in [*runs, None]:
            try:
                with inject(fault):
                    sort_folder(src, toy_run, out, method="move", backend="eager")
            except (VitrinaError, OSError):
                assert fault is not None and fault.fired
            seen = _everywhere(src, out)
            for d, name in digests.items():
                assert d in seen, f"{name} lost after a failed run ({fault})"
        # The clean run: every photo exactly once, in the output, with its row.
        seen = _everywhere(src, out)
        for d, name in digests.items():
            assert seen.count(d) == 1, f"{name} exists {seen.count(d)} times"
        assert not [p for p in src.iterdir() if p.suffix != ".txt"], "a source was left"
        assert not list(out.rglob(".vitrina-tmp-*"))
        with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        listed = {r["destination"] for r in rows if r["destination"]}
        for p in out.rglob("*"):
            if p.is_file() and p.name != "manifest.csv" and _digest(p) not in already:
                assert str(p) in listed, f"{p.relative_to(out)} has no manifest row"
        for r in rows:
            assert set(r) == {
                "source",
                "destination",
                "label",
                "confidence",
                "top3",
                "status",
                "error",
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
