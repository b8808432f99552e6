"""File operations that never lose or overwrite anything the user owns.

Writes go to a ``.vitrina-tmp-*`` file in the target folder, are fsynced and then renamed into
place, so a crash leaves either the old file or the new one, never half of one. ``place_file``
copies, verifies (size and sha256) and only then claims a free name or deletes a moved source;
re-running after a crash finishes the job without duplicates.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from vitrina.errors import DiskFullError, VitrinaError
from vitrina.io.images import file_digest

__all__ = [
    "PLACE_METHODS",
    "TEMP_PREFIX",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "cache_dir",
    "check_movable",
    "disk_full_error",
    "disk_of",
    "fsync_dir",
    "is_disk_full",
    "make_output_dir",
    "os_error_line",
    "place_file",
    "remove_stale_temps",
    "save_new_image",
    "unique_path",
]

TEMP_PREFIX = ".vitrina-tmp-"
PLACE_METHODS: tuple[str, ...] = ("copy", "move", "link")

# Quota exhaustion is "disk full" for the user too.
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
# os.link failures that mean "this filesystem has no hard links" (FAT, exFAT, some FUSE/SMB).
_NO_HARDLINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
)


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_writer(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Yield a file whose content replaces ``path`` only if the block finishes without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    target = Path(path)
    try:
        fd, tmp = _create_temp(target.parent, target)
        try:
            _copy_mode_of(target, fd)
            kwargs: dict[str, Any] = {} if mode == "wb" else {"encoding": encoding}
            with os.fdopen(fd, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise disk_full_error(target) from exc
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (old content kept if anything fails)."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically (old content kept if anything fails)."""
    with atomic_writer(path, "w", encoding=encoding) as fh:
        fh.write(text)


# --------------------------------------------------------------------------- errors in one line


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def disk_of(path: str | os.PathLike[str]) -> tuple[str, int | None]:
    """(mount point, free bytes) of the file system holding ``path`` (or its nearest existing
    parent); free is None when the OS will not say."""
    p = Path(os.path.abspath(path))
    while not os.path.exists(p) and p != p.parent:
        p = p.parent
    try:
        dev = os.stat(p).st_dev
        while p != p.parent and os.stat(p.parent).st_dev == dev:
            p = p.parent
        st = os.statvfs(p)
        return str(p), st.f_bavail * st.f_frsize
    except OSError:
        return str(p), None


def disk_full_error(path: str | os.PathLike[str]) -> DiskFullError:
    """The one-line error for a full disk: what was being written and which disk is full."""
    mount, free = disk_of(path)
    left = f", {_size(free)} free" if free is not None else ""
    return DiskFullError(
        f"{path}: disk full while writing (the disk at {mount}{left})", path=path, disk=mount
    )


def os_error_line(path: str | os.PathLike[str], exc: OSError, doing: str) -> str:
    """``PATH: DOING: reason`` in words (read-only file system, permission denied...)."""
    if exc.errno == errno.EROFS:
        reason = "read-only file system"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
        reason = "folder not found"
    elif exc.errno == errno.ENAMETOOLONG:
        reason = "name too long for the file system"
    else:
        reason = (exc.strerror or str(exc)).lower()
    return f"{path}: {doing}: {reason}"


def make_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create the output folder ``path`` (and parents); a folder that cannot be written is
    one line naming it and why, not a traceback."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        if not _writable(p):  # e.g. a read-only mount that the folder is already on
            raise PermissionError(
                errno.EROFS if _read_only_fs(p) else errno.EACCES, "not writable", str(p)
            )
    except FileExistsError:
        raise VitrinaError(f"{p}: exists and is not a folder; choose another --out") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(p) from None
        raise VitrinaError(
            os_error_line(p, exc, "cannot write the output folder") + "; choose another --out"
        ) from None
    return p


def check_movable(photos: Iterable[str | os.PathLike[str]]) -> None:
    """Before moving ``photos``: one line, with nothing done yet, when a folder they are in
    cannot be written (a read-only card or mount), since no photo could leave it."""
    for folder in sorted({Path(p).parent for p in photos}):
        if not _writable(folder):
            why = "read-only file system" if _read_only_fs(folder) else "permission denied"
            raise VitrinaError(
                f"{folder}: cannot move photos out of it ({why}): nothing was moved; "
                "use --copy, or make it writable"
            )


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)  # False on a read-only mount even for root


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"


# --------------------------------------------------------------------------- naming


def unique_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if nothing is there, else the first free ``stem-N.ext`` (N = 1, 2, ...)."""
    p = Path(path)
    for candidate in _name_variants(p):
        if not os.path.lexists(candidate):  # a dangling symlink still owns its name
            return candidate
    raise AssertionError("unreachable")  # _name_variants is infinite


def save_new_image(image: Any, path: str | os.PathLike[str], *, quality: int = 90) -> Path:
    """Encode a PIL image (format from the suffix: JPEG or PNG) and write it atomically at
    :func:`unique_path` of ``path``: nothing existing is overwritten. Returns where it went."""
    import io

    dest = unique_path(path)
    buf = io.BytesIO()
    if dest.suffix.lower() in (".jpg", ".jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, buf.getvalue())
    return dest


def _name_variants(p: Path) -> Iterator[Path]:
    yield p
    n = 1
    while True:
        yield p.with_name(f"{p.stem}-{n}{p.suffix}")
        n += 1


# --------------------------------------------------------------------------- placing files


def place_file(
    src: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    method: str,
    name: str | None = None,
    before_delete: Callable[[Path], None] | None = None,
) -> tuple[Path, bool]:
    """Copy, move or symlink ``src`` into ``dst_dir`` without ever overwriting.

    Returns ``(final_path, already_there)``; ``already_there`` is True when an identical file
    (same name or a ``stem-N.ext`` variant) was found and nothing was written. A moved source
    is deleted only after its copy is on disk and verified, and after ``before_delete(final)``
    returned (a journal records its intent there). When the source cannot be deleted (a
    read-only card), the copy made by this call is removed again and the error says so:
    a move happens completely or not at all.
    """
    if method not in PLACE_METHODS:
        raise ValueError(f"method must be one of {', '.join(PLACE_METHODS)}, not {method!r}")
    if name is not None and (not name or Path(name).name != name or name in (".", "..")):
        raise ValueError(f"name must be a plain file name, not {name!r}")  # stay inside dst_dir
    source = Path(src)
    folder = Path(dst_dir)
    wanted = folder / (name or source.name)
    tmp: Path | None = None
    try:
        _check_source(source)
        folder.mkdir(parents=True, exist_ok=True)
        if method == "link":
            return _place_link(source, wanted)
        src_size = source.stat().st_size
        src_digest = file_digest(source)
        existing = _find_identical(source, wanted, src_size, src_digest)
        if existing is not None:
            if method == "move" and not _same_path(existing, source):
                # Finishes a move that crashed after its copy; the copy was there before
                # this call, so a failed delete leaves it (it is not ours to remove now).
                if before_delete is not None:
                    before_delete(existing)
                _delete_source(source, None)
            return existing, True

        tmp = _copy_to_temp(source, folder)
        if tmp.stat().st_size != src_size or file_digest(tmp) != src_digest:
            raise VitrinaError(
                f"{source}: copy in {folder} does not match the source (verification failed); "
                "source kept"
            )
        final = _claim_name(tmp, wanted)
        tmp = None  # now owned by the final name
        _fsync_dir(folder)
        if method == "move":
            if before_delete is not None:
                try:
                    before_delete(final)
                except BaseException:
                    _unlink_quietly(final)  # the move did not happen: no second copy left
                    raise
            _delete_source(source, final)
        return final, False
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise disk_full_error(wanted) from exc
        raise VitrinaError(os_error_line(source, exc, f"cannot {method} to {folder}")) from exc
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)


def _check_source(source: Path) -> None:
    """A regular file, or one line saying what it is instead."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise VitrinaError(
            f"{source}: source file not found (moved or deleted meanwhile)"
        ) from None
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        what = "a folder"
    elif stat.S_ISFIFO(st.st_mode):
        what = "a FIFO (named pipe)"
    elif stat.S_ISSOCK(st.st_mode):
        what = "a socket"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        what = "a device"
    else:
        what = "not a regular file"
    raise VitrinaError(f"{source}: is {what}, not a photo file; left where it is")


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete ``.vitrina-tmp-*`` files left by an interrupted run under ``folder``; return count.

    Only call this when no other vitrina process is writing into ``folder``.
    """
    removed = 0
    for root, _dirs, files in os.walk(folder):  # does not follow symlinked folders
        for fname in files:
            if fname.startswith(TEMP_PREFIX):
                try:
                    os.unlink(os.path.join(root, fname))
                except FileNotFoundError:
                    continue
                removed += 1
    return removed


# --------------------------------------------------------------------------- internals


def _find_identical(source: Path, wanted: Path, size: int, digest: str) -> Path | None:
    """First regular file among ``wanted``, ``stem-1.ext``, ... with the source's content.

    Variants are probed in order up to the first free name, which is where ``unique_path``
    put them; symlinks are skipped so a move never deletes what a link points at.
    """
    for candidate in _name_variants(wanted):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            continue
        if _same_path(candidate, source) or file_digest(candidate) == digest:
            return candidate
    return None


def _place_link(source: Path, wanted: Path) -> tuple[Path, bool]:
    target = os.path.abspath(source)
    for candidate in _name_variants(wanted):
        if os.path.islink(candidate):
            if os.path.realpath(candidate) == os.path.realpath(target):
                return candidate, True  # linked by an earlier run
            continue
        try:
            os.symlink(target, candidate)
        except FileExistsError:
            continue  # taken (possibly just now by another process): next name
        _fsync_dir(wanted.parent)
        return candidate, False
    raise AssertionError("unreachable")


def _copy_to_temp(source: Path, folder: Path) -> Path:
    """Copy ``source`` into a fresh temp file in ``folder``, with its timestamps, fsynced."""
    fd, tmp = _create_temp(folder, source)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        try:
            shutil.copystat(source, tmp)
        except OSError as exc:
            # Timestamps/permissions are nice to keep but some filesystems (FAT, SMB) refuse
            # them; the bytes are what matter. A full disk, though, is still a failure.
            if exc.errno in _DISK_FULL:
                raise
        _fsync_file(tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _claim_name(tmp: Path, wanted: Path) -> Path:
    """Give ``tmp`` the first free name at or after ``wanted`` without ever overwriting."""
    final = unique_path(wanted)
    while True:
        try:
            # link() fails if the name exists, so no check-then-act race with other writers.
            os.link(tmp, final)
        except FileExistsError:
            final = unique_path(wanted)
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise
            break
        _unlink_quietly(tmp)
        return final
    # No hard links on this filesystem: replace() after an existence check is the best left.
    while os.path.lexists(final):
        final = unique_path(wanted)
    os.replace(tmp, final)
    return final


def _delete_source(source: Path, copy: Path | None) -> None:
    """Delete a moved source; if it cannot be deleted, remove ``copy`` (made by this move) so
    that the photo is not left twice, and say what happened."""
    try:
        os.unlink(source)
    except OSError as exc:
        if exc.errno in (errno.ENOENT,):
            raise
        undone = copy is not None
        if copy is not None:
            try:
                os.unlink(copy)
                _fsync_dir(copy.parent)
            except OSError:
                undone = False
        where = (
            "nothing was moved (its copy was removed again)"
            if undone
            else f"it was copied to {copy}"
            if copy is not None
            else "the copy there was kept"
        )
        raise VitrinaError(
            os_error_line(source, exc, "not moved: the source cannot be deleted")
            + f"; {where}; use --copy, or make {source.parent} writable"
        ) from None
    _fsync_dir(source.parent)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename/unlink in ``folder`` durable (a no-op where the OS cannot)."""
    _fsync_dir(Path(folder))


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _create_temp(folder: Path, like: Path) -> tuple[int, Path]:
    """Create and open ``folder/.vitrina-tmp-<random>.<ext>`` exclusively (mode from umask)."""
    while True:
        tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{like.suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _copy_mode_of(target: Path, fd: int) -> None:
    """Keep the permissions of the file being replaced."""
    # A new file, or a platform without fchmod: the umask default is fine.
    with suppress(OSError, NotImplementedError):
        os.chmod(fd, stat.S_IMODE(os.stat(target).st_mode))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename/unlink in ``folder`` durable; not possible on every OS/filesystem."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def cache_dir(name: str) -> Path:
    """``$VITRINA_CACHE/<name>`` (default ``$XDG_CACHE_HOME/vitrina`` or ``~/.cache/vitrina``),
    resolved now: exports, quantized models, zoo figures and backend decisions live here."""
    root = os.environ.get("VITRINA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vitrina"
    )
    return Path(root) / name
