"""vitrina.io.files: nothing the user owns is lost or overwritten, whatever fails when."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

from vitrina.errors import DiskFullError, VitrinaError
from vitrina.io import (
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    place_file,
    remove_stale_temps,
    unique_path,
)
from vitrina.io import files as files_mod

PHOTO = b"\xff\xd8\xff\xe0 pretend jpeg " + bytes(range(256)) * 40


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def _src(tmp_path: Path, data: bytes = PHOTO, name: str = "IMG_0001.jpg") -> Path:
    folder = tmp_path / "card"
    folder.mkdir(exist_ok=True)
    p = folder / name
    p.write_bytes(data)
    return p


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "report.txt"
    atomic_write_text(p, "first")
    atomic_write_text(p, "second ✓")
    assert p.read_text(encoding="utf-8") == "second ✓"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert _temps(tmp_path) == []


def test_atomic_writer_keeps_old_content_when_the_writer_raises(tmp_path: Path) -> None:
    p = tmp_path / "labels.json"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_writer(p) as fh:
        fh.write("new, half writ")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert _temps(tmp_path) == []


def test_atomic_writer_disk_full_raises_disk_full_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "model.bin"
    p.write_bytes(b"old")
    monkeypatch.setattr(files_mod.os, "fsync", _enospc)
    with pytest.raises(DiskFullError, match=r"model\.bin: disk full while writing"):
        atomic_write_bytes(p, b"new" * 1000)
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert _temps(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_write_keeps_the_permissions_of_the_replaced_file(tmp_path: Path) -> None:
    p = tmp_path / "secrets.toml"
    p.write_text("a")
    p.chmod(0o600)
    atomic_write_text(p, "b")
    assert p.stat().st_mode & 0o777 == 0o600


def test_atomic_writer_rejects_other_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_writer(tmp_path / "x", "a"):
        pass


# --------------------------------------------------------------------------- unique_path


def test_unique_path_suffixes_first_free_name(tmp_path: Path) -> None:
    p = tmp_path / "cat.jpg"
    assert unique_path(p) == p
    p.write_bytes(b"1")
    assert unique_path(p) == tmp_path / "cat-1.jpg"
    (tmp_path / "cat-1.jpg").write_bytes(b"2")
    assert unique_path(p) == tmp_path / "cat-2.jpg"
    if hasattr(os, "symlink"):
        os.symlink(tmp_path / "gone", tmp_path / "cat-2.jpg")  # a dangling link owns its name
        assert unique_path(p) == tmp_path / "cat-3.jpg"


# --------------------------------------------------------------------------- place_file: copy


def test_copy_creates_folder_keeps_source_and_timestamps(tmp_path: Path) -> None:
    src = _src(tmp_path)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    final, already = place_file(src, tmp_path / "out" / "cats", method="copy")
    assert (final, already) == (tmp_path / "out" / "cats" / "IMG_0001.jpg", False)
    assert final.read_bytes() == PHOTO
    assert src.read_bytes() == PHOTO
    assert int(final.stat().st_mtime) == 1_000_000_000
    assert _temps(tmp_path) == []


def test_copy_never_overwrites_a_different_file_with_the_same_name(tmp_path: Path) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "IMG_0001.jpg").write_bytes(b"someone else's photo")
    final, already = place_file(src, dst, method="copy")
    assert (final.name, already) == ("IMG_0001-1.jpg", False)
    assert (dst / "IMG_0001.jpg").read_bytes() == b"someone else's photo"
    assert final.read_bytes() == PHOTO


def test_copy_twice_is_a_no_op_the_second_time(tmp_path: Path) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "IMG_0001.jpg").write_bytes(b"x" * len(PHOTO))  # same size, other content
    first = place_file(src, dst, method="copy")
    second = place_file(src, dst, method="copy")
    assert first == (dst / "IMG_0001-1.jpg", False)
    assert second == (dst / "IMG_0001-1.jpg", True)  # found among the suffixed variants
    assert sorted(p.name for p in dst.iterdir()) == ["IMG_0001-1.jpg", "IMG_0001.jpg"]


def test_copy_under_a_new_name(tmp_path: Path) -> None:
    final, _ = place_file(_src(tmp_path), tmp_path / "out", method="copy", name="cat_01.jpg")
    assert final == tmp_path / "out" / "cat_01.jpg"
    assert final.read_bytes() == PHOTO


def test_copy_never_overwrites_a_name_taken_at_the_last_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    real_link = os.link

    def racing_link(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        if Path(b).name == "IMG_0001.jpg":  # another process grabs the name first
            Path(b).write_bytes(b"theirs")
        real_link(a, b)

    monkeypatch.setattr(files_mod.os, "link", racing_link)
    final, already = place_file(src, dst, method="copy")
    assert (final.name, already) == ("IMG_0001-1.jpg", False)
    assert (dst / "IMG_0001.jpg").read_bytes() == b"theirs"
    assert final.read_bytes() == PHOTO
    assert _temps(tmp_path) == []


def test_copy_without_hard_link_support_still_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"

    def no_link(_a: object, b: os.PathLike[str]) -> None:
        # Another process takes the free name just before we try it ...
        Path(b).write_bytes(b"theirs")
        # ... and the filesystem has no hard links, which is what FAT/exFAT answer.
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files_mod.os, "link", no_link)
    final, _ = place_file(src, dst, method="copy")
    assert final.name == "IMG_0001-1.jpg" and final.read_bytes() == PHOTO
    assert (dst / "IMG_0001.jpg").read_bytes() == b"theirs"
    assert _temps(tmp_path) == []


# --------------------------------------------------------------------------- place_file: move


def test_move_deletes_source_only_after_destination_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    seen: list[bool] = []
    real_unlink = os.unlink

    def spy_unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if Path(path) == src:  # at this moment the copy must be complete, under its final name
            final = dst / src.name
            seen.append(final.is_file() and final.read_bytes() == PHOTO)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(files_mod.os, "unlink", spy_unlink)
    final, already = place_file(src, dst, method="move")
    assert (final, already) == (dst / "IMG_0001.jpg", False)
    assert seen == [True]
    assert not src.exists()
    assert final.read_bytes() == PHOTO


def test_move_rerun_after_crash_finishes_without_duplicate(tmp_path: Path) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    place_file(src, dst, method="copy")  # a move killed after its copy, before the delete
    final, already = place_file(src, dst, method="move")
    assert (final, already) == (dst / "IMG_0001.jpg", True)
    assert not src.exists()
    assert [p.name for p in dst.iterdir()] == ["IMG_0001.jpg"]


def test_move_into_its_own_folder_keeps_the_file(tmp_path: Path) -> None:
    src = _src(tmp_path)
    final, already = place_file(src, src.parent, method="move")
    assert (final, already) == (src, True)
    assert src.read_bytes() == PHOTO


def test_verify_mismatch_keeps_source_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    real_digest = files_mod.file_digest

    def corrupt_copy_digest(path: str | os.PathLike[str], *args: str) -> str:
        digest = real_digest(path, *args)
        return "0" * len(digest) if Path(path).name.startswith(TEMP_PREFIX) else digest

    monkeypatch.setattr(files_mod, "file_digest", corrupt_copy_digest)
    with pytest.raises(VitrinaError, match="verification failed") as info:
        place_file(src, dst, method="move")
    assert "IMG_0001.jpg" in str(info.value)
    assert src.read_bytes() == PHOTO
    assert list(dst.iterdir()) == []


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("method", ["copy", "move"])
def test_disk_full_keeps_source_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"

    def half_copy_then_full(a: os.PathLike[str], b: os.PathLike[str]) -> None:
        Path(b).write_bytes(Path(a).read_bytes()[:100])  # the disk fills mid-copy
        _enospc()

    monkeypatch.setattr(files_mod.shutil, "copyfile", half_copy_then_full)
    with pytest.raises(DiskFullError, match="disk full") as info:
        place_file(src, dst, method=method)
    assert str(dst / "IMG_0001.jpg") in str(info.value)  # names the destination
    assert src.read_bytes() == PHOTO
    assert list(dst.iterdir()) == []


def test_other_os_errors_become_one_line_vitrina_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)

    def io_error(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files_mod.shutil, "copyfile", io_error)
    with pytest.raises(VitrinaError) as info:
        place_file(src, tmp_path / "out", method="move")
    assert not isinstance(info.value, DiskFullError)
    assert "IMG_0001.jpg" in str(info.value) and "\n" not in str(info.value)
    assert src.exists()
    assert _temps(tmp_path) == []


def test_missing_source_and_bad_method(tmp_path: Path) -> None:
    with pytest.raises(VitrinaError, match=r"nope\.jpg"):
        place_file(tmp_path / "nope.jpg", tmp_path / "out", method="copy")
    with pytest.raises(ValueError, match="method"):
        place_file(_src(tmp_path), tmp_path / "out", method="teleport")
    with pytest.raises(ValueError, match="plain file name"):
        place_file(_src(tmp_path), tmp_path / "out", method="copy", name="../escape.jpg")
    assert not (tmp_path / "escape.jpg").exists()


# --------------------------------------------------------------------------- link, temps


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symlinks")
def test_link_creates_symlink_to_absolute_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "IMG_0001.jpg").write_bytes(b"theirs")
    monkeypatch.chdir(tmp_path)
    final, already = place_file(Path("card") / "IMG_0001.jpg", dst, method="link")
    assert (final.name, already) == ("IMG_0001-1.jpg", False)
    assert final.is_symlink()
    assert os.path.isabs(os.readlink(final)) and final.resolve() == src.resolve()
    assert final.read_bytes() == PHOTO
    assert (dst / "IMG_0001.jpg").read_bytes() == b"theirs"
    assert place_file(src, dst, method="link") == (final, True)
    assert src.exists()


def test_remove_stale_temps_only_removes_temps(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in (f"{TEMP_PREFIX}1.jpg", f"a/{TEMP_PREFIX}2", f"a/b/{TEMP_PREFIX}3.png"):
        (tmp_path / rel).write_bytes(b"partial")
    keep = [tmp_path / "photo.jpg", tmp_path / "a" / "vitrina-tmp-not-hidden.jpg"]
    for p in keep:
        p.write_bytes(b"mine")
    assert remove_stale_temps(tmp_path) == 3
    assert _temps(tmp_path) == []
    assert all(p.read_bytes() == b"mine" for p in keep)
    assert remove_stale_temps(tmp_path / "does-not-exist") == 0


def test_copy_leaves_no_temp_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "out"

    def interrupted(a: os.PathLike[str], b: os.PathLike[str]) -> None:
        shutil.copyfile(a, b)
        raise KeyboardInterrupt  # Ctrl-C between copy and rename

    monkeypatch.setattr(files_mod.shutil, "copystat", interrupted)
    with pytest.raises(KeyboardInterrupt):
        place_file(src, dst, method="move")
    assert src.read_bytes() == PHOTO
    assert list(dst.iterdir()) == []


# --------------------------------------------------------------------------- issue 13


def test_move_whose_source_cannot_be_deleted_is_undone_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only source: the copy made by this move is removed again (the photo is never
    left twice) and the error says nothing was moved, instead of "cannot move"."""
    src = _src(tmp_path)
    real_unlink = os.unlink

    def read_only(path, *a, **k):
        if Path(path) == src:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(files_mod.os, "unlink", read_only)
    with pytest.raises(VitrinaError) as info:
        place_file(src, tmp_path / "out", method="move")
    msg = str(info.value)
    assert "not moved: the source cannot be deleted: read-only file system" in msg
    assert "nothing was moved" in msg and "\n" not in msg
    assert src.read_bytes() == PHOTO
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failing_intent_leaves_no_copy_behind(tmp_path: Path) -> None:
    src = _src(tmp_path)

    def journal_full(final: Path) -> None:
        assert final.read_bytes() == PHOTO  # verified copy in place before the intent
        raise DiskFullError("manifest.csv.pending: disk full while writing")

    with pytest.raises(DiskFullError):
        place_file(src, tmp_path / "out", method="move", before_delete=journal_full)
    assert src.read_bytes() == PHOTO
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_is_named_not_missing(tmp_path: Path) -> None:
    fifo = tmp_path / "card" / "pipe.jpg"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(VitrinaError, match=r"pipe\.jpg: is a FIFO \(named pipe\), not a photo"):
        place_file(fifo, tmp_path / "out", method="copy")
    assert fifo.exists()


def test_disk_full_names_the_disk(tmp_path: Path) -> None:
    from vitrina.io import disk_full_error

    e = disk_full_error(tmp_path / "o" / "manifest.csv")
    assert e.disk and Path(e.disk).is_dir() and f"the disk at {e.disk}" in str(e)
    assert "free" in str(e)
