"""vitrina.io.journal: the manifest holds whole rows only, and a move's intent precedes its delete."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import pytest

from vitrina.errors import DiskFullError, VitrinaError
from vitrina.io import ManifestJournal
from vitrina.io import journal as journal_mod

FIELDS = ("source", "destination", "label", "status", "error")


def row(src: str, dest: str = "", status: str = "sorted", label: str = "cats", error: str = ""):
    return {"source": src, "destination": dest, "label": label, "status": status, "error": error}


def read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))


def test_rows_are_recorded_once_with_a_header(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    with ManifestJournal.open(m, FIELDS) as j:
        assert j.record([row("a.jpg", "out/cats/a.jpg"), row("a.jpg", "out/cats/a.jpg")]) == 1
    with ManifestJournal.open(m, FIELDS) as j:
        assert j.record([row("a.jpg", "out/cats/a.jpg")]) == 0  # a re-run: no duplicate
        assert row("a.jpg", "out/cats/a.jpg") in j and len(j) == 1
    assert read(m) == [list(FIELDS), ["a.jpg", "out/cats/a.jpg", "cats", "sorted", ""]]
    assert not (tmp_path / "manifest.csv.pending").exists()


@pytest.mark.parametrize(
    "tail",
    [
        b"c.jpg,out/dogs/c.j",  # cut in the middle of a field
        b'd.jpg,"out/odd\nname.jpg",dogs,so',  # cut after a newline inside a quoted field
        b"\x00" * 300,  # a file extended by the crash but never written (ext4 delalloc)
    ],
    ids=["mid-field", "newline-in-quotes", "nul-bytes"],
)
def test_a_half_written_last_row_is_cut_never_glued_onto(tmp_path: Path, tail: bytes) -> None:
    m = tmp_path / "manifest.csv"
    whole = b'source,destination,label,status,error\na.jpg,out/cats/a.jpg,cats,sorted,\n"b,1.jpg",out/cats/b.jpg,cats,sorted,\n'
    m.write_bytes(whole + tail)
    with ManifestJournal.open(m, FIELDS) as j:
        assert j.repair.cut_bytes == len(tail)
        assert any("half-written" in line for line in j.repair.lines(m))
        j.record([row("e.jpg", "out/dogs/e.jpg", label="dogs")])
    rows = read(m)
    assert rows[1:] == [
        ["a.jpg", "out/cats/a.jpg", "cats", "sorted", ""],
        ["b,1.jpg", "out/cats/b.jpg", "cats", "sorted", ""],
        ["e.jpg", "out/dogs/e.jpg", "dogs", "sorted", ""],
    ]


def test_disk_full_while_recording_leaves_whole_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = tmp_path / "manifest.csv"
    real_write = os.write
    state = {"fail": False}

    def half_then_full(fd: int, data: bytes) -> int:
        if state["fail"]:
            if len(data) > 5:  # the disk takes a few bytes, then it is full
                return real_write(fd, bytes(data[:5]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_mod.os, "write", half_then_full)
    with ManifestJournal.open(m, FIELDS) as j:
        j.record([row("a.jpg", "out/cats/a.jpg")])
        state["fail"] = True
        with pytest.raises(DiskFullError) as info:
            j.record([row("b.jpg", "out/cats/b.jpg")])
        msg = str(info.value)
        assert "manifest.csv: disk full" in msg and "the disk at /" in msg and "\n" not in msg
        assert info.value.disk
        assert read(m)[1:] == [["a.jpg", "out/cats/a.jpg", "cats", "sorted", ""]]  # cut back
        state["fail"] = False
        j.record([row("b.jpg", "out/cats/b.jpg")])  # space again: the row is whole
    assert [r[0] for r in read(m)[1:]] == ["a.jpg", "b.jpg"]


def test_intent_is_synced_before_and_resolved_after_a_kill(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    moved, kept = tmp_path / "moved.jpg", tmp_path / "kept.jpg"
    kept.write_bytes(b"x")  # its move never got as far as the delete
    j = ManifestJournal.open(m, FIELDS)
    j.intend([row(str(moved), "out/cats/moved.jpg")])
    j.intend([row(str(kept), "out/cats/kept.jpg")])
    assert len(read(j.pending_path)) == 2  # on disk (synced) before any delete
    os.close(j._fd)  # SIGKILL here: no completion row, no clean close
    os.close(j._pending_fd)

    with ManifestJournal.open(m, FIELDS) as again:
        assert again.repair.finished == 1 and again.repair.dropped == 1
        assert again.placed(str(moved)) is False  # recorded, though its file is not here
        assert row(str(moved), "out/cats/moved.jpg") in again
        assert row(str(kept), "out/cats/kept.jpg") not in again
    assert [r[0] for r in read(m)[1:]] == [str(moved)]
    assert not (tmp_path / "manifest.csv.pending").exists()


def test_completed_intents_are_not_recorded_twice(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    j = ManifestJournal.open(m, FIELDS)
    r = row(str(tmp_path / "gone.jpg"), "out/cats/gone.jpg")
    j.intend([r])
    j.record([r])
    os.close(j._fd)  # killed before the pending file was removed
    os.close(j._pending_fd)
    with ManifestJournal.open(m, FIELDS) as again:
        assert again.repair.finished == 0
    assert len(read(m)) == 2


def test_placed_means_a_destination_that_still_exists(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    there = tmp_path / "there.jpg"
    there.write_bytes(b"x")
    with ManifestJournal.open(m, FIELDS) as j:
        j.record([row("a.jpg", str(there)), row("b.jpg", str(tmp_path / "deleted.jpg"))])
    done = ManifestJournal.read(m, FIELDS)
    assert done.placed("a.jpg") and not done.placed("b.jpg") and not done.placed("c.jpg")


def test_one_run_at_a_time(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    with ManifestJournal.open(m, FIELDS), pytest.raises(VitrinaError, match="another vitrina run"):
        ManifestJournal.open(m, FIELDS)


def test_a_foreign_csv_is_refused_and_left_alone(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    m.write_text("name,price\nsoap,2\n")
    with pytest.raises(VitrinaError, match="not a manifest of this command"):
        ManifestJournal.open(m, FIELDS)
    assert m.read_text() == "name,price\nsoap,2\n"


def test_paths_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    odd = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name from an old camera card
    with ManifestJournal.open(m, FIELDS) as j:
        j.record([row(odd, "out/cats/x.jpg")])
    with ManifestJournal.open(m, FIELDS) as j:
        assert row(odd, "out/cats/x.jpg") in j


def test_a_folder_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*_a: object, **_k: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(journal_mod.os, "open", read_only)
    with pytest.raises(VitrinaError, match=r"manifest\.csv: .*read-only file system$"):
        ManifestJournal.open(tmp_path / "manifest.csv", FIELDS)
