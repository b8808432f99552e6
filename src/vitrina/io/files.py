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
from collections.abc import Iterator
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
            raise DiskFullError(f"{target}: disk full while writing") from exc
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
) -> tuple[Path, bool]:
    """Copy, move or symlink ``src`` into ``dst_dir`` without ever overwriting.

    Returns ``(final_path, already_there)``; ``already_there`` is True when an identical file
    (same name or a ``stem-N.ext`` variant) was found and nothing was written. A moved source
    is deleted only after its copy is on disk and verified.
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
        if not source.is_file():
            raise VitrinaError(f"{source}: source file not found")
        folder.mkdir(parents=True, exist_ok=True)
        if method == "link":
            return _place_link(source, wanted)
        src_size = source.stat().st_size
        src_digest = file_digest(source)
        existing = _find_identical(source, wanted, src_size, src_digest)
        if existing is not None:
            if method == "move" and not _same_path(existing, source):
                _delete_source(source)  # finishes a move that crashed after its copy
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
            _delete_source(source)
        return final, False
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(f"{wanted}: disk full while writing") from exc
        raise VitrinaError(f"{source}: cannot {method} to {folder}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)


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


def _delete_source(source: Path) -> None:
    os.unlink(source)
    _fsync_dir(source.parent)


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
