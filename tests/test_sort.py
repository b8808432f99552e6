from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import make_bomb_png, make_image
from vitrina.classify.classifier import load
from vitrina.classify.sort import sort_folder
from vitrina.errors import DataError, DiskFullError


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_copy_sorts_by_class_and_keeps_sources(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in photos.iterdir()}
    out = tmp_path / "sorted"
    s = sort_folder(photos, toy_run, out, backend="eager")
    assert s.counts == {"blue": 2, "green": 2, "red": 2, "unreadable": 1}
    for colour in ("red", "green", "blue"):
        assert sorted(p.name for p in (out / colour).iterdir()) == [
            f"{colour}-new-0.png",
            f"{colour}-new-1.png",
        ]
    assert (out / "unreadable" / "broken.jpg").exists()
    assert s.skipped_non_image == 1  # notes.txt is not a photo
    assert {p: p.read_bytes() for p in photos.iterdir()} == before
    rows = manifest(out)
    assert len(rows) == 7
    red = next(r for r in rows if r["source"].endswith("red-new-0.png"))
    assert red["label"] == "red" and red["status"] == "sorted"
    assert float(red["confidence"]) >= 0.5 and red["top3"].startswith("red:")
    assert Path(red["destination"]).read_bytes() == (photos / "red-new-0.png").read_bytes()
    broken = next(r for r in rows if r["source"].endswith("broken.jpg"))
    assert broken["status"] == "unreadable" and "broken.jpg" in broken["error"]


def test_rerun_does_not_duplicate(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "sorted"
    sort_folder(photos, toy_run, out, backend="eager")
    first = files(out)
    again = sort_folder(photos, toy_run, out, backend="eager")
    assert files(out) == first
    assert again.skipped_done == 7 and not again.items
    assert len(manifest(out)) == 7


def test_name_clash_gets_suffix_and_nothing_is_overwritten(
    toy_run: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sorted"
    mine = make_image(out / "red" / "red-new-0.png", (1, 2, 3), seed=99)
    precious = mine.read_bytes()
    sort_folder(photos, toy_run, out, backend="eager")
    assert mine.read_bytes() == precious
    assert (out / "red" / "red-new-0-1.png").read_bytes() == (photos / "red-new-0.png").read_bytes()


def test_move_is_resumable_after_a_kill(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    originals = {p.name: p.read_bytes() for p in photos.glob("*.png")}
    out = tmp_path / "sorted"

    # Simulate a kill after some photos were placed: the callback aborts the run.
    def kill(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sort_folder(photos, toy_run, out, method="move", backend="eager", on_progress=kill)
    # Simulate the worst moment: copied into place but the source not yet deleted.
    left = sorted(photos.glob("red-*.png"))
    if left:
        (out / "red").mkdir(parents=True, exist_ok=True)
        shutil.copy2(left[0], out / "red" / left[0].name)
    sort_folder(photos, toy_run, out, method="move", backend="eager")
    placed = {p.name: p.read_bytes() for p in out.rglob("*.png")}
    assert placed == originals  # every photo exactly once, byte for byte
    assert sorted(p.name for p in photos.iterdir()) == ["notes.txt"]


def test_dry_run_changes_nothing(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    before = files(photos)
    s = sort_folder(
        photos, toy_run, tmp_path / "sorted", method="move", dry_run=True, backend="eager"
    )
    assert not (tmp_path / "sorted").exists()
    assert files(photos) == before
    assert {it.status for it in s.items} == {"planned"}
    assert len(s.items) == 7


def test_min_confidence_sends_to_unsure(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    for rgb in ((128, 128, 128), (125, 35, 125), (30, 120, 130)):  # between the classes
        make_image(photos / f"odd-{rgb[0]}-{rgb[1]}.png", rgb)
    s = sort_folder(photos, toy_run, tmp_path / "o", min_confidence=0.95, backend="eager")
    for it in s.items:
        if it.status == "unreadable":
            continue
        expected = "unsure" if it.confidence < 0.95 else it.label
        assert it.destination is not None and it.destination.parent.name == expected
        assert it.status == ("unsure" if expected == "unsure" else "sorted")
    assert s.counts.get("unsure", 0) >= 1
    assert sum(s.counts.get(c, 0) for c in ("red", "green", "blue")) >= 6


def test_link_method(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    sort_folder(photos, toy_run, tmp_path / "o", method="link", backend="eager")
    link = tmp_path / "o" / "red" / "red-new-0.png"
    assert link.is_symlink() and link.resolve() == (photos / "red-new-0.png").resolve()


def test_recursive_skips_the_output_inside_input(toy_run: Path, photos: Path) -> None:
    make_image(photos / "sub" / "blue-deep.png", (30, 40, 220), seed=7)
    out = photos / "sorted"
    s = sort_folder(photos, toy_run, out, recursive=True, backend="eager")
    assert s.counts["blue"] == 3
    again = sort_folder(photos, toy_run, out, recursive=True, backend="eager")
    assert not again.items  # its own output was not sorted again


def test_decompression_bomb_goes_to_unreadable(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    make_bomb_png(photos / "huge.png")
    s = sort_folder(photos, toy_run, tmp_path / "o", backend="eager")
    bomb = next(it for it in s.items if it.source.name == "huge.png")
    assert bomb.status == "unreadable" and "too large" in bomb.error


def test_class_names_that_escape_are_refused(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    meta = json.loads((run / "vitrina.json").read_text())
    meta["classes"][0] = "../outside"
    (run / "vitrina.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not a safe folder name"):
        sort_folder(photos, run, tmp_path / "o", backend="eager")
    assert not (tmp_path / "outside").exists()


def test_full_disk_stops_cleanly(toy_run: Path, photos: Path, tmp_path: Path, monkeypatch) -> None:
    import vitrina.classify.sort as sort_mod

    real = sort_mod.place_file
    calls = {"n": 0}

    def filling(src, dst_dir, *, method, name=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise DiskFullError(f"{dst_dir}: disk full while writing")
        return real(src, dst_dir, method=method, name=name)

    monkeypatch.setattr(sort_mod, "place_file", filling)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = tmp_path / "o"
    with pytest.raises(DiskFullError, match="stopped after placing 2 of 7"):
        sort_folder(photos, toy_run, out, method="move", backend="eager")
    left = {p.name: p.read_bytes() for p in photos.iterdir()}
    placed = {
        p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv"
    }
    assert {**left, **placed} == before  # nothing lost
    assert len(placed) == 2 and len(manifest(out)) == 2
    assert not list(out.rglob(".vitrina-tmp-*"))


def test_bf16_backend_agrees_with_eager(toy_run: Path, photos: Path) -> None:
    clf = load(toy_run)
    paths = sorted(photos.glob("*.png"))
    eager = clf.predict(paths, backend="eager")
    bf16 = clf.predict(paths, backend="bf16")
    assert [p.label for p in eager] == [p.label for p in bf16]
    for a, b in zip(eager, bf16, strict=True):
        assert abs(a.confidence - b.confidence) < 0.05


def test_fast_backends_match_plain_fp32(toy_run: Path, photos: Path) -> None:
    """eager (channels_last) and onnx against the plain model, on the same batch."""
    import torch

    from vitrina.data import eval_transform
    from vitrina.engine import Embedding, Engine, Logits
    from vitrina.io import read_image

    clf = load(toy_run)
    tf = eval_transform(clf.model.preprocess)
    x = torch.stack([tf(read_image(p)) for p in sorted(photos.glob("*.png"))])
    with torch.inference_mode():
        ref = clf.model.eval().classify(x.clone())
        emb = clf.model.embed(x.clone())
    for backend in ("eager", "onnx"):
        eng = Engine(clf.model, backend=backend, device="cpu", num_workers=0)
        out = eng.forward(Logits(), x)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(out.argmax(1), ref.argmax(1))
        torch.testing.assert_close(eng.forward(Embedding(), x), emb, atol=1e-4, rtol=1e-4)
