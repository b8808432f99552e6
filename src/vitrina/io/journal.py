"""The manifest journal of the sorts: whole CSV rows or nothing, intent before a delete.

``OUT/manifest.csv`` holds a header and one row per completed placement, for people to read
and for a re-run to know what is done. Two promises make it trustworthy after a crash, a full
disk or a kill at any moment:

* **Whole rows or nothing.** Rows are appended with one ``write`` each through an
  ``O_APPEND`` descriptor; when a write fails (a full disk) the file is cut back to its
  previous length. A half row that a kill left behind is found when the journal is opened (a
  record is complete only at a newline outside quotes: the number of ``"`` before it is
  even) and cut off, so the next row is never glued onto it.
* **Intent, then completion.** Before a moved photo's source is deleted, its rows are
  appended to ``manifest.csv.pending`` and synced (:meth:`ManifestJournal.intend`); the
  completion rows go to the manifest afterwards (:meth:`ManifestJournal.record`). Opening
  the journal again resolves what a crash left pending: an intended row whose source is gone
  was moved, and is recorded now; one whose source is still there was never moved (the run
  places it again, and :func:`vitrina.io.place_file` recognises its verified copy).

A row is identified by ``key`` (by default source, destination and status): recording the same
row twice writes it once, so re-runs never duplicate rows. One process at a time: the journal
holds an ``flock`` on the manifest while open.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vitrina.errors import VitrinaError
from vitrina.io.files import disk_full_error, fsync_dir, is_disk_full, os_error_line

__all__ = ["PENDING_SUFFIX", "JournalRepair", "ManifestJournal"]

PENDING_SUFFIX = ".pending"
_ENCODING = "utf-8"
# Paths that are not valid UTF-8 (bytes from another system) are kept byte for byte.
_ERRORS = "surrogateescape"


@dataclass
class JournalRepair:
    """What opening the journal found and fixed (empty when the last run ended cleanly)."""

    cut_bytes: int = 0  # a half-written last row that was removed
    damaged_rows: int = 0  # complete lines with the wrong number of fields: ignored
    finished: int = 0  # moves a crash interrupted after the delete, recorded now
    dropped: int = 0  # intents whose source is still there: the run places them again

    def lines(self, manifest: Path) -> list[str]:
        out = []
        if self.cut_bytes:
            out.append(f"{manifest}: removed a half-written last row ({self.cut_bytes} bytes)")
        if self.damaged_rows:
            out.append(f"{manifest}: ignored {self.damaged_rows} damaged row(s)")
        if self.finished:
            out.append(
                f"{manifest}: recorded {self.finished} move(s) an interrupted run had finished"
            )
        return out


@dataclass
class ManifestJournal:
    """An open manifest (see the module docstring). Use :meth:`open` and ``with``."""

    path: Path
    fields: tuple[str, ...]
    key: tuple[str, ...]
    repair: JournalRepair = field(default_factory=JournalRepair)
    _fd: int = -1
    _pending_fd: int = -1
    _keys: set[tuple[str, ...]] = field(default_factory=set)
    _placed: dict[str, list[str]] = field(default_factory=dict)  # source -> destinations
    _size: int = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        fields: Sequence[str],
        *,
        key: Sequence[str] = ("source", "destination", "status"),
    ) -> ManifestJournal:
        """Open (or create) the manifest at ``path``: lock it, cut a half-written last row,
        resolve the intents a crash left (module docstring). One-line errors for a folder
        that cannot be written, a full disk, another run holding it, or a foreign file."""
        j = cls(Path(path), tuple(fields), tuple(key))
        for name in (*j.key, "source", "destination"):
            if name not in j.fields:
                raise ValueError(f"{name!r} is not one of the manifest fields {j.fields}")
        try:
            j._fd = os.open(j.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise j._error(exc, "cannot write the manifest") from None
        try:
            j._lock()
            j._load()
            j._resolve_pending()
        except BaseException:
            j._close_fds()
            raise
        return j

    @classmethod
    def read(
        cls,
        path: str | os.PathLike[str],
        fields: Sequence[str],
        *,
        key: Sequence[str] = ("source", "destination", "status"),
    ) -> ManifestJournal:
        """The rows of the manifest at ``path`` (none when it does not exist), read only: no
        lock, no repair (a half last row is ignored), nothing written. For dry runs."""
        j = cls(Path(path), tuple(fields), tuple(key))
        try:
            data = j.path.read_bytes()
        except FileNotFoundError:
            return j
        except OSError as exc:
            raise j._error(exc, "cannot read the manifest") from None
        j._parse(data[: _complete_prefix(data)])
        return j

    def _lock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VitrinaError(
                f"{self.path}: another vitrina run is writing into {self.path.parent}; "
                "wait for it to finish (one run per output folder)"
            ) from None

    def _load(self) -> None:
        data = _read_all(self._fd)
        good = _complete_prefix(data)
        if good < len(data):  # a row cut off by a kill or a full disk: never glue onto it
            self._truncate(good)
            self.repair.cut_bytes = len(data) - good
            data = data[:good]
        self._size = good
        if not data:
            self._append(_encode([self.fields]))
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        if not data:
            return
        rows = csv.reader(io.StringIO(data.decode(_ENCODING, _ERRORS), newline=""))
        header = tuple(next(rows, ()))
        if header != self.fields:
            raise VitrinaError(
                f"{self.path}: not a manifest of this command (its columns are "
                f"{', '.join(header) or 'none'}; expected {', '.join(self.fields)}); "
                "choose another --out"
            )
        for row in rows:
            if len(row) != len(self.fields) or any("\x00" in v for v in row):
                self.repair.damaged_rows += 1
                continue
            self._remember(dict(zip(self.fields, row, strict=True)))

    def _resolve_pending(self) -> None:
        pending = self.pending_path
        try:
            data = pending.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, "cannot read the pending moves") from None
        # A half intent was never synced, so its delete never happened: only whole rows count.
        data = data[: _complete_prefix(data)]
        finished = []
        for row in csv.reader(io.StringIO(data.decode(_ENCODING, _ERRORS), newline="")):
            if len(row) != len(self.fields):
                continue
            r = dict(zip(self.fields, row, strict=True))
            if self._key(r) in self._keys:
                continue  # its completion was recorded
            if os.path.lexists(r["source"]):
                self.repair.dropped += 1  # never deleted: this run places it again
            else:
                finished.append(r)
        if finished:
            self.record(finished)
            self.repair.finished = len(finished)
        self._sync()
        self._remove_pending()

    # ------------------------------------------------------------------ reading

    @property
    def pending_path(self) -> Path:
        return self.path.with_name(self.path.name + PENDING_SUFFIX)

    def __contains__(self, row: Mapping[str, object]) -> bool:
        return self._key(row) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def placed(self, source: str | os.PathLike[str]) -> bool:
        """True when a row records ``source`` at a destination that still exists."""
        return any(os.path.lexists(d) for d in self._placed.get(str(source), ()))

    # ------------------------------------------------------------------ writing

    def intend(self, rows: Iterable[Mapping[str, object]]) -> None:
        """Append ``rows`` to the pending file and sync it: call before deleting a source."""
        data = _encode([[_text(r.get(f)) for f in self.fields] for r in rows])
        if not data:
            return
        try:
            if self._pending_fd < 0:
                self._pending_fd = os.open(
                    self.pending_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666
                )
                fsync_dir(self.path.parent)
            _write_whole(self._pending_fd, data)
            os.fsync(self._pending_fd)
        except OSError as exc:
            raise self._error(exc, "cannot record a pending move", self.pending_path) from None

    def record(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Append the rows not recorded yet, whole or not at all; returns how many."""
        new = []
        for r in rows:
            row = {f: _text(r.get(f)) for f in self.fields}
            k = self._key(row)
            if k not in self._keys:
                new.append(row)
                self._keys.add(k)  # also dedupes within this call
        if not new:
            return 0
        try:
            self._append(_encode([[r[f] for f in self.fields] for r in new]))
        except BaseException:
            for r in new:
                self._keys.discard(self._key(r))
            raise
        for r in new:
            self._remember(r)
        return len(new)

    def close(self) -> None:
        """Sync the manifest; a run that ended here leaves nothing pending."""
        if self._fd < 0:
            return
        try:
            self._sync()
            self._remove_pending()
        finally:
            self._close_fds()

    def __enter__(self) -> ManifestJournal:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
            return
        # Failing or interrupted: settle what is pending now if the disk lets us (a source
        # already deleted gets its row); otherwise the next open does it.
        try:
            with suppress(VitrinaError, OSError):
                self._resolve_pending()
        finally:
            self._close_fds()

    # ------------------------------------------------------------------ internals

    def _key(self, row: Mapping[str, object]) -> tuple[str, ...]:
        return tuple(_text(row.get(f)) for f in self.key)

    def _remember(self, row: dict[str, str]) -> None:
        self._keys.add(self._key(row))
        if row["destination"]:
            self._placed.setdefault(row["source"], []).append(row["destination"])

    def _append(self, data: bytes) -> None:
        """One whole write at the end; on failure the file is cut back (no half row)."""
        try:
            _write_whole(self._fd, data)
        except OSError as exc:
            with suppress(OSError):  # if even this fails, the next open cuts the half row
                self._truncate(self._size)
            raise self._error(exc, "cannot write the manifest") from None
        self._size += len(data)

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self._error(exc, "cannot sync the manifest") from None

    def _remove_pending(self) -> None:
        if self._pending_fd >= 0:
            os.close(self._pending_fd)
            self._pending_fd = -1
        try:
            os.unlink(self.pending_path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, "cannot remove the pending moves") from None
        fsync_dir(self.path.parent)

    def _close_fds(self) -> None:
        for name in ("_pending_fd", "_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with suppress(OSError):
                    os.close(fd)

    def _error(self, exc: OSError, doing: str, path: Path | None = None) -> VitrinaError:
        if is_disk_full(exc):
            return disk_full_error(path or self.path)
        return VitrinaError(os_error_line(path or self.path, exc, doing))


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _encode(rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode(_ENCODING, _ERRORS)


def _complete_prefix(data: bytes) -> int:
    """Length of the longest prefix made of complete CSV records: it ends at a newline
    outside quotes, i.e. after an even number of ``"`` (quotes inside a quoted field come in
    pairs). 0 when there is none."""
    end = data.rfind(b"\n")
    quotes = data.count(b'"', 0, end) if end >= 0 else 0
    while end >= 0 and quotes % 2:
        prev = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', prev + 1 if prev >= 0 else 0, end)
        end = prev
    return end + 1


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_whole(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - write() raises rather than returning 0 on a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
