"""Placements on several threads against the plain loop: the same names, the same answers,
in the order asked, whatever order the disk finishes them in."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import vitrina.io.placing as placing
from vitrina.io.placing import PlacementQueue


def _sources(root: Path) -> list[tuple[Path, str]]:
    """Photos into two folders, with the names that collide: the same name from several
    source folders (some identical in content), and a name that is another's ``-1``."""
    out = []
    for d in range(6):
        for name in ("a.jpg", "b.jpg", "a-1.jpg", f"own-{d}.jpg"):
            src = root / f"src{d}" / name
            src.parent.mkdir(parents=True, exist_ok=True)
            same = d % 2 == 0 and name == "b.jpg"  # three identical b.jpg
            src.write_bytes(b"same bytes" if same else f"{d}/{name}".encode() * 50)
            folder = "left" if name == "b.jpg" or (d + len(name)) % 2 else "right"
            out.append((src, folder))
    return out


def _place_all(srcs: list[tuple[Path, str]], out: Path, threads: int) -> list[tuple]:
    answers = []
    with PlacementQueue[int](method="copy", threads=threads, depth=5) as q:
        for k, (src, folder) in enumerate(srcs):
            for tag, outcome in q.submit(k, src, out / folder):
                answers.append((tag, outcome))
        answers.extend(q.drain())
    return [
        (tag, o if isinstance(o, BaseException) else (o[0].relative_to(out), o[1]))
        for tag, o in answers
    ]


def test_threads_give_the_names_and_order_of_the_plain_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srcs = _sources(tmp_path / "photos")
    plain = _place_all(srcs, tmp_path / "plain", threads=0)
    real = placing.place_file
    rng = random.Random(0)

    def slow(*a, **k):  # the disk finishes placements in any order
        time.sleep(rng.random() * 0.01)
        return real(*a, **k)

    monkeypatch.setattr(placing, "place_file", slow)
    threaded = _place_all(srcs, tmp_path / "threaded", threads=4)
    assert [t for t, _ in threaded] == list(range(len(srcs)))  # in the order asked
    assert threaded == plain
    assert sum(1 for _, (_, there) in plain if there) == 2  # the identical b.jpg: not copied again
    for (src, _), (_, (rel, _)) in zip(srcs, threaded, strict=True):
        assert (tmp_path / "threaded" / rel).read_bytes() == src.read_bytes()


def test_an_error_is_handed_back_in_its_place(tmp_path: Path) -> None:
    srcs = _sources(tmp_path / "photos")[:6]
    srcs[2] = (tmp_path / "photos" / "gone.jpg", "left")  # no such file
    got = _place_all(srcs, tmp_path / "out", threads=3)
    assert [t for t, _ in got] == list(range(6))
    assert isinstance(got[2][1], BaseException) and "gone.jpg" in str(got[2][1])
    assert all(not isinstance(o, BaseException) for t, o in got if t != 2)


def test_moves_run_in_the_callers_thread(tmp_path: Path) -> None:
    import threading

    seen = []
    src = tmp_path / "p.jpg"
    src.write_bytes(b"x" * 100)
    q = PlacementQueue[int](
        "move", threads=4, before_delete=lambda t, f: seen.append(threading.current_thread())
    )
    with q:
        done = list(q.submit(0, src, tmp_path / "out"))
    assert q.threads == 0 and seen == [threading.current_thread()]
    assert done and not src.exists() and (tmp_path / "out" / "p.jpg").is_file()
