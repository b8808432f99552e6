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


@pytest.mark.parametrize("method", ["move", "copy"])
def test_full_disk_stops_cleanly(
    toy_run: Path, photos: Path, tmp_path: Path, monkeypatch, method: str
) -> None:
    """Moves run one at a time: exactly the two before the full disk are placed. Copies run
    on several threads: the ones already in flight may finish (complete, verified copies,
    not in the journal), and the same command run again finishes the rest."""
    import vitrina.io.placing as placing

    real = placing.place_file
    calls = {"n": 0}

    def filling(src, dst_dir, *, method, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise DiskFullError(f"{dst_dir}: disk full while writing")
        return real(src, dst_dir, method=method, **kw)

    monkeypatch.setattr(placing, "place_file", filling)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = tmp_path / "o"
    with pytest.raises(DiskFullError, match="stopped after placing 2 of 7"):
        sort_folder(photos, toy_run, out, method=method, backend="eager", placers=1)
    left = {p.name: p.read_bytes() for p in photos.iterdir()}
    placed = {
        p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv"
    }
    assert {**left, **placed} == before  # nothing lost
    assert len(manifest(out)) == 2
    assert not list(out.rglob(".vitrina-tmp-*"))
    if method == "move":
        assert len(placed) == 2
        return
    again = sort_folder(photos, toy_run, out, method=method, backend="eager")
    rows = manifest(out)
    assert len(rows) == 7 and again.placed == 5
    copies = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv"]
    assert len(copies) == 7  # no second copy of the ones placed in flight


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


# --------------------------------------------------------------------------- issue 13: the journal


def _one_row_per_photo(out: Path, originals: dict[str, bytes]) -> None:
    """Every photo exists exactly once (byte for byte) and has exactly one row naming it."""
    placed = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg")]
    assert sorted(p.name for p in placed) == sorted(originals)
    for p in placed:
        assert p.read_bytes() == originals[p.name]
    rows = manifest(out)
    assert all(None not in r.values() and len(r) == 7 for r in rows)  # no glued or cut row
    by_dest = {r["destination"]: r for r in rows if r["destination"]}
    assert sorted(Path(d).name for d in by_dest) == sorted(originals)
    assert all(Path(d).is_file() for d in by_dest)
    assert not (out / "manifest.csv.pending").exists()


def test_rerun_cuts_a_half_written_row_instead_of_gluing_onto_it(
    toy_run: Path, photos: Path, tmp_path: Path
) -> None:
    """Issue 13 #5: a full disk (or a kill) left half a row; the re-run appended to it."""
    originals = {p.name: p.read_bytes() for p in photos.iterdir() if p.suffix != ".txt"}
    out = tmp_path / "o"
    (photos / "notes.txt").unlink()
    first = sorted(photos.iterdir())[:3]
    hold = tmp_path / "later"
    hold.mkdir()
    for p in sorted(photos.iterdir())[3:]:
        p.rename(hold / p.name)
    sort_folder(photos, toy_run, out, method="move", backend="eager", num_workers=0)
    assert len(manifest(out)) == len(first)
    with open(out / "manifest.csv", "ab") as f:
        f.write(str(photos / "zz.png").encode() + b",/half/a/ro")  # what the crash left
    for p in hold.iterdir():
        p.rename(photos / p.name)
    sort_folder(photos, toy_run, out, method="move", backend="eager", num_workers=0)
    _one_row_per_photo(out, originals)


def test_disk_full_writing_the_manifest_stops_in_one_line_and_the_rerun_finishes(
    toy_run: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Issue 13 #5: disk full at a manifest row -> one line naming the disk, exit 1, whole rows;
    the same command run again finishes without a duplicate or a lost photo."""
    import errno
    import os

    from conftest import one_line_error, run_cli
    from vitrina.io import journal as journal_mod

    originals = {p.name: p.read_bytes() for p in photos.iterdir() if p.suffix != ".txt"}
    out = tmp_path / "o"
    real_write = os.write
    writes = {"n": 0}

    def full_after_three_rows(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("manifest.csv"):
            writes["n"] += 1
            if writes["n"] > 4:  # the header and three rows fit
                real_write(fd, bytes(data[:7]))  # half a row, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_mod.os, "write", full_after_three_rows)
    code, _, err = run_cli(
        capsys, "sort", photos, "--model", toy_run, "--out", out, "--move", "--backend", "eager"
    )
    assert code == 1
    one_line_error(err.split("backend:")[0], "manifest.csv: disk full", "the disk at /", "again")
    assert len(manifest(out)) == 3
    monkeypatch.undo()
    code, _, err = run_cli(
        capsys, "sort", photos, "--model", toy_run, "--out", out, "--move", "--backend", "eager"
    )
    assert code == 0, err
    _one_row_per_photo(out, originals)
    assert sorted(p.name for p in photos.iterdir()) == ["notes.txt"]


def test_a_kill_between_delete_and_row_loses_no_row(
    toy_run: Path, photos: Path, tmp_path: Path
) -> None:
    """Issue 13 #6: SIGKILL after the source was deleted, before its row was written."""
    from conftest import killed_after_delete

    originals = {p.name: p.read_bytes() for p in photos.iterdir() if p.suffix != ".txt"}
    out = tmp_path / "o"
    clf = load(toy_run)

    def run() -> None:
        sort_folder(photos, clf, out, method="move", backend="eager", num_workers=0)

    for after in (2, 4):  # two kills at two moments, then a clean re-run
        assert killed_after_delete(run, after=after) == 9
    sort_folder(photos, clf, out, method="move", backend="eager", num_workers=0)
    _one_row_per_photo(out, originals)


def test_read_only_destination_is_one_line(
    toy_run: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Issue 13 #7: `Errno 30` came out as a traceback."""
    import errno
    import os

    from conftest import one_line_error, run_cli

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def read_only_fs(path, *a, **k):  # chmod does not stop root: simulate the mount
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only_fs)
    code, _, err = run_cli(capsys, "sort", photos, "--model", toy_run, "--out", ro / "out")
    assert code == 1
    one_line_error(err, "ro/out", "read-only file system", "choose another --out")


def test_move_out_of_a_read_only_folder_moves_nothing_and_says_so(
    toy_run: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Issue 13 #14: it copied every photo, said "not placed", recorded nothing, exit 0."""
    import vitrina.io.files as files_mod
    from conftest import one_line_error, run_cli

    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    real = files_mod._writable  # a read-only card; chmod would not stop root
    monkeypatch.setattr(files_mod, "_writable", lambda p: Path(p) != photos and real(p))
    monkeypatch.setattr(files_mod, "_read_only_fs", lambda p: True)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "sort", photos, "--model", toy_run, "--out", out, "--move")
    assert code == 1
    one_line_error(err, str(photos), "read-only file system", "nothing was moved", "--copy")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    assert not out.exists()


def test_a_fifo_is_named_as_such_and_the_sort_exits_1(
    toy_run: Path, photos: Path, tmp_path: Path, capsys
) -> None:
    """Issue 13 #14: a FIFO named .jpg was "source file not found" and the sort exited 0."""
    import os

    from conftest import run_cli

    os.mkfifo(photos / "camera-pipe.jpg")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "sort", photos, "--model", toy_run, "--out", out)
    assert code == 1
    assert "camera-pipe.jpg: is a FIFO (named pipe), not a photo file; left where it is" in err
    assert "not found" not in err
    assert (photos / "camera-pipe.jpg").exists() and len(list(out.rglob("*.png"))) == 6
    row = next(r for r in manifest(out) if r["source"].endswith("camera-pipe.jpg"))
    assert row["status"] == "error" and "FIFO" in row["error"]


def test_items_stream_and_need_not_be_kept(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    """The dry run of 50,000 photos held every item (1.27 GB): ``keep_items=False`` keeps
    counts and problems only, and ``on_item`` sees every plan as it is made."""
    seen = []
    s = sort_folder(
        photos,
        toy_run,
        tmp_path / "o",
        dry_run=True,
        backend="eager",
        on_item=seen.append,
        keep_items=False,
    )
    assert s.items == [] and len(seen) == 7 and sum(s.counts.values()) == 7
    assert len(s.unreadable) == 1 and not (tmp_path / "o").exists()
    full = sort_folder(photos, toy_run, tmp_path / "o", dry_run=True, backend="eager")
    assert [it.row() for it in full.items] == [it.row() for it in seen]
