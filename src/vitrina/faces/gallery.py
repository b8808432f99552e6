"""A persistent face gallery: enroll people, identify faces or say "unknown", calibrate.

Folder layout::

    GALLERY/gallery.json    format marker, dim, embedder fingerprint and label, the decision
                            rule, the calibration figures, and a revision counter (bumped
                            before every change, so a reader knows when to reload)
    GALLERY/index/          a vitrina.search.Index (faiss + SQLite, exact, euclidean): one row
                            per template; label = person name, path = the chip's path relative
                            to GALLERY, sha256 = the face key ``<photo sha256>:<face index>``
    GALLERY/chips/<person>/<photo-sha16>-<face#>.png
                            the aligned chip of every template, kept for review (its PNG text
                            holds the source photo, the box and the key)
    GALLERY/.lock           fcntl.flock: exclusive around every write, shared around reads
    GALLERY/.writing        only while a write is in progress (see "Chips" below)
    GALLERY/rename.json     only while a rename is in progress (see below)

**Enrolling.** A person's templates are the faces of their photos, one per photo: a photo with
several faces contributes its largest face (the report says so); a photo with none, or an
unreadable one, is reported and skipped. The face key is the photo's sha256 (the digest of the
face vector when the photo has none) plus the face index, so enrolling the same photo again --
under any name -- is a no-op that the report lists with the person it already belongs to.

**Chips** are private data: none may outlive its template. A new chip is written under a
pending name (``chips/<person>/.pending-<name>.png``, hidden from listings) and renamed to
its own name only after the template's row has committed. A writer marks the gallery
(``.writing``) for the length of its change; when the next process to take the lock finds the
mark, the writer died mid-change, and it sweeps the chips folder: a pending chip whose
template committed gets its name, any other pending chip, and any chip without a template
(e.g. of a forget killed between its two steps), is deleted. A gallery written before chips
were pending (no ``chips_swept`` in gallery.json) is swept the same way once, when first
opened by a process that may write to it.

**Concurrency.** Every write takes the exclusive lock, then re-reads gallery.json and opens
the index afresh inside it, so two processes enrolling at once serialise and both see each
other's rows. Reads take the shared lock and reuse the in-memory templates while the
revision in gallery.json is unchanged.

**Renaming** moves rows between labels and chips between folders; the index has no relabel
operation, so it is done as remove + add from a journal (``rename.json``: old and new chip
paths and the vectors) written first and replayed by the next lock holder if a crash
interrupts it. Every step is idempotent, so nothing is lost or duplicated.

**Deciding.** See :mod:`vitrina.faces.decision` for the rule and its calibration. Before
:meth:`Gallery.calibrate` the rule is dlib's plain 0.6 threshold; every result says which
(``calibrated``, ``threshold_source``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.engine import as_items
from vitrina.errors import DataError, UnknownNameError, VitrinaError
from vitrina.faces.decision import (
    DEFAULT_THRESHOLD,
    DecisionRule,
    calibrate_rule,
    person_distances,
    template_spread,
    top_two,
    verify_distance,
)
from vitrina.faces.detection import DEFAULT_DETECTOR, LEGACY_DETECTOR
from vitrina.faces.light_projection import project
from vitrina.faces.reports import (
    UNKNOWN,
    CalibrationReport,
    EnrollReport,
    Forgotten,
    Identification,
    Identifications,
    Person,
    Verification,
)
from vitrina.faces.types import Face, PhotoFaces

__all__ = [
    "FORMAT",
    "UNKNOWN",
    "CalibrationReport",
    "EnrollReport",
    "Forgotten",
    "Gallery",
    "GalleryError",
    "Identification",
    "Identifications",
    "Person",
    "Verification",
    "check_person_name",
]

FORMAT = "vitrina-face-gallery"
FORMAT_VERSION = 1
RESERVED_NAMES = (UNKNOWN, "no-face")  # folders of `vitrina faces sort`
MAX_NAME = 100
MAX_NAME_BYTES = 255  # a folder name on every common file system
NEW_PERSON = "person-{:04d}"
_NEW_PERSON_RE = re.compile(r"person-(\d{4,})")

META_NAME = "gallery.json"
INDEX_DIR = "index"
CHIPS_DIR = "chips"
LOCK_NAME = ".lock"
WRITING_MARK = ".writing"
CHIPS_SWEPT = "chips_swept"  # gallery.json: chips are pending until committed (see "Chips")
PENDING_CHIP = ".pending-"
RENAME_JOURNAL = "rename.json"


class GalleryError(VitrinaError):
    """A gallery folder that cannot be used, or a request it cannot honour."""


def check_person_name(name: str) -> str:
    """The name as it is stored (Unicode NFC: "é" typed as one character or as e + accent is
    one person), or :class:`GalleryError` for names that could escape the chips folder, fail
    on disk or deceive: empty; over 100 characters or 255 bytes of UTF-8 (a folder name); not
    encodable (a lone surrogate); with '/', '\\', control, invisible (zero-width) or bidi
    control characters; a leading dot (so '..' too); surrounding spaces; 'unknown' /
    'no-face'. Checked before anything touches the disk."""
    if not isinstance(name, str):
        raise GalleryError(f"person name must be text, got {type(name).__name__}")
    cut = name if len(name) <= 40 else name[:40] + "..."
    shown = repr(cut)
    try:
        name = unicodedata.normalize("NFC", name)
        size = len(name.encode("utf-8"))
    except UnicodeError:
        raise GalleryError(
            f"person name {cut!a} is not valid text (it holds a lone surrogate, e.g. bytes of "
            "another encoding); type the name again"
        ) from None
    hidden = [c for c in name if unicodedata.category(c) in _HIDDEN_CATEGORIES]
    if hidden:
        shown = ascii(cut)  # escaped: the message must show what the name hides
        what = ", ".join(sorted({f"U+{ord(c):04X} {_char_name(c)}" for c in hidden}))
        raise GalleryError(
            f"person name {shown} holds characters that do not show or that reorder text "
            f"({what}); type it without them"
        )
    bad = (
        not name
        or len(name) > MAX_NAME
        or name.startswith(".")
        or name != name.strip()
        or any(c in name for c in "/\\")
    )
    if bad:
        raise GalleryError(
            f"person name {shown} is not allowed: 1-{MAX_NAME} characters, no '/', '\\', "
            "control characters, leading dot or surrounding spaces"
        )
    if size > MAX_NAME_BYTES:
        raise GalleryError(
            f"person name {shown} is {size} bytes in UTF-8; a name is a folder name and may be "
            f"at most {MAX_NAME_BYTES} bytes (about {MAX_NAME_BYTES // 4} emoji or "
            f"{MAX_NAME_BYTES // 2} accented letters)"
        )
    if name.lower() in RESERVED_NAMES:
        raise GalleryError(f"person name {name!r} is reserved; choose another")
    return name


# Control (Cc), format (Cf: zero-width spaces and joiners, bidi marks and overrides, soft
# hyphen...), surrogate (Cs), unassigned (Cn), line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})


def _char_name(c: str) -> str:
    return unicodedata.name(c, "control character").lower()


def _lookalike_key(name: str) -> str:
    """Names that read the same (case, compatibility forms: 'ﬁ' and 'fi', a no-break space
    and a space, full-width letters) share a key."""
    return unicodedata.normalize("NFKC", name).casefold()


def _stored_name(name: str) -> str:
    """A name as given to a lookup, in the form names are stored in."""
    try:
        return unicodedata.normalize("NFC", name)
    except (TypeError, UnicodeError):
        return name


# --------------------------------------------------------------------------- helpers


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _as_vector(x: Face | np.ndarray) -> np.ndarray:
    v = x.vector if isinstance(x, Face) else x
    return np.asarray(v, dtype=np.float32).reshape(-1)


def _face_area(f: Face) -> int:
    return max(f.box.width, 0) * max(f.box.height, 0)


def _face_key(photo: PhotoFaces, face: Face) -> str:
    digest = photo.sha256 or hashlib.sha256(_as_vector(face).tobytes()).hexdigest()
    return f"{digest}:{face.index}"


def _png_bytes(chip: np.ndarray, text: dict[str, str]) -> bytes:
    from PIL import Image, PngImagePlugin

    a = np.asarray(chip)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@dataclass
class _Snapshot:
    """The templates grouped by person (sorted by name), as one consistent read."""

    revision: int
    names: list[str]
    starts: np.ndarray  # (P,) first row of each person
    vectors: np.ndarray  # (N, D) float32
    keys: list[str]
    chips: list[str]  # relative to the gallery
    spread: np.ndarray  # (P,)

    @classmethod
    def read(cls, index: Any, revision: int) -> _Snapshot:
        items = index.items()
        _, vecs = index.vectors()
        labels = [it["label"] for it in items]
        order = sorted(range(len(items)), key=lambda i: (labels[i], items[i]["id"]))
        vecs = vecs[order] if len(order) else np.zeros((0, index.dim), np.float32)
        names: list[str] = []
        starts: list[int] = []
        for row, i in enumerate(order):
            if not names or labels[i] != names[-1]:
                names.append(labels[i])
                starts.append(row)
        st = np.asarray(starts, dtype=np.int64)
        return cls(
            revision=revision,
            names=names,
            starts=st,
            vectors=vecs,
            keys=[items[i]["sha256"] for i in order],
            chips=[items[i]["path"] for i in order],
            spread=template_spread(vecs, st),
        )

    def rows_of(self, name: str) -> range:
        p = self.names.index(name)
        end = int(self.starts[p + 1]) if p + 1 < len(self.names) else len(self.vectors)
        return range(int(self.starts[p]), end)


# --------------------------------------------------------------------------- the gallery


class Gallery:
    """A face gallery folder (module docstring). Open with ``Gallery(path)``; make one with
    :meth:`create` (or :meth:`open_or_create`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        self.path = p
        meta = self._read_meta()
        self.dim = int(meta["dim"])
        self.fingerprint: str | None = meta.get("fingerprint")
        self.embedder_label: str | None = meta.get("embedder_label")
        self._cache: _Snapshot | None = None
        self._rule = DecisionRule.from_dict(meta.get("rule") or {})
        self._calibration: dict[str, Any] | None = meta.get("calibration")

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r})"

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        fingerprint: str | None,
        embedder_label: str | None,
        pipeline: Mapping[str, Any] | None = None,
    ) -> Gallery:
        """A new, empty gallery in a new (or empty) folder; nothing existing is touched.

        ``pipeline``: the :class:`~vitrina.faces.pipeline.FacePipeline` settings that photos
        given by path go through (see :meth:`pipeline`); ``None``: the defaults."""
        p = cls._make(path, dim, fingerprint, embedder_label, pipeline, reuse=False)
        return cls(p)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        fingerprint: str | None,
        embedder_label: str | None,
        pipeline: Mapping[str, Any] | None = None,
    ) -> Gallery:
        """Open the gallery at ``path`` (checking it was made with the same embedder), or
        create it there; safe when several processes do this at once."""
        p = cls._make(path, dim, fingerprint, embedder_label, pipeline, reuse=True)
        g = cls(p)
        g._check_embedder(fingerprint, dim)
        return g

    @classmethod
    def _make(
        cls,
        path: str | os.PathLike[str],
        dim: int,
        fingerprint: str | None,
        label: str | None,
        pipeline: Mapping[str, Any] | None,
        *,
        reuse: bool,
    ) -> Path:
        """Create the gallery folder under the lock; ``reuse``: an existing gallery is kept."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise GalleryError(f"{p}: exists and is not a folder; choose another gallery path")
        p.mkdir(parents=True, exist_ok=True)
        with _flock(p / LOCK_NAME, exclusive=True):
            if not (reuse and (p / META_NAME).exists()):
                cls._create_locked(p, dim, fingerprint, label, pipeline)
        return p

    @staticmethod
    def _create_locked(
        p: Path,
        dim: int,
        fingerprint: str | None,
        label: str | None,
        pipeline: Mapping[str, Any] | None = None,
    ) -> None:
        from vitrina.io.files import atomic_write_text
        from vitrina.search import Index

        if int(dim) < 1:
            raise GalleryError(f"dim must be at least 1, got {dim}")
        if any(c.name != LOCK_NAME for c in p.iterdir()):
            raise GalleryError(
                f"{p}: already exists and is not empty; a gallery is made in a new or empty "
                "folder (open an existing one with Gallery(path))"
            )
        Index.create(
            p / INDEX_DIR,
            dim=int(dim),
            metric="euclidean",
            kind="exact",
            fingerprint=fingerprint,
            model_label=label,
        ).close()
        (p / CHIPS_DIR).mkdir()
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": int(dim),
            "metric": "euclidean",
            "fingerprint": fingerprint,
            "embedder_label": label,
            "created": _now_iso(),
            "revision": 0,
            "rule": DecisionRule().to_dict(),
            "calibration": None,
            "pipeline": {"detector": DEFAULT_DETECTOR, **dict(pipeline or {})},
            CHIPS_SWEPT: True,
        }
        # Written last: its presence is what makes the folder a gallery.
        atomic_write_text(p / META_NAME, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def for_pipeline(cls, path: str | os.PathLike[str], pipeline: Any) -> Gallery:
        """Open the gallery at ``path`` or create it for ``pipeline``'s vectors; its settings
        (detector, embedder...) are stored so later photos go through the same pipeline."""
        return cls.open_or_create(
            path,
            dim=pipeline.dim,
            fingerprint=pipeline.fingerprint,
            embedder_label=pipeline.embedder_label,
            pipeline=pipeline.settings(),
        )

    def pipeline(self, **overrides: Any) -> Any:
        """The :class:`~vitrina.faces.pipeline.FacePipeline` of this gallery: the stored
        settings, with ``overrides`` (``None`` values ignored); it must give vectors
        comparable with the gallery's (same embedder)."""
        from vitrina.faces.pipeline import FacePipeline

        settings = dict(self._read_meta().get("pipeline") or {})
        # Galleries made before the cascade recorded no detector when made with the defaults:
        # theirs was HOG, and they keep it.
        settings.setdefault("detector", LEGACY_DETECTOR)
        # ... nor whether the landmarks of a face in uneven light were found with the light
        # divided out (flatten_landmarks, default since 6 December 2026): theirs were not.
        settings.setdefault("flatten_landmarks", False)
        # ... nor whether flatten_chips evens out the rows too (default since 6 December
        # 2026): theirs evened out the columns only.
        settings.setdefault("flatten_rows", False)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        pipe = FacePipeline(**settings)
        self._check_embedder(pipe.fingerprint, pipe.dim)
        return pipe

    def _photos(self, items: Any) -> list[PhotoFaces]:
        """PhotoFaces as given, or photos (paths, images in memory: one or a list, see
        :func:`vitrina.engine.as_items`) run through :meth:`pipeline`."""
        if isinstance(items, PhotoFaces):
            return [items]
        photos, _ = as_items(items)
        given = [isinstance(i, PhotoFaces) for i in photos]
        if all(given):
            return photos
        if any(given):
            raise VitrinaError("identify: pass either PhotoFaces or photos, not a mix of both")
        return list(self.pipeline().process(photos))

    def _not_a_gallery(self, why: str) -> GalleryError:
        return GalleryError(
            f"{self.path}: not a face gallery ({why}); create one with "
            f"`vitrina faces enroll {self.path} NAME PHOTOS...` or Gallery.create()"
        )

    def _read_meta(self) -> dict[str, Any]:
        p = self.path
        if not p.exists():
            raise self._not_a_gallery("no such folder")
        if not p.is_dir():
            raise self._not_a_gallery("it is a file")
        try:
            meta = json.loads((p / META_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            why = f"no {META_NAME}"
            if (p / INDEX_DIR).exists():
                why += ", half-created: delete the folder and create it again"
            raise self._not_a_gallery(why) from None
        except (OSError, ValueError) as exc:
            raise self._not_a_gallery(f"{META_NAME} unreadable: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise self._not_a_gallery(f"{META_NAME} is not a gallery marker")
        if meta.get("format_version") != FORMAT_VERSION:
            raise GalleryError(
                f"{p}: gallery format version {meta.get('format_version')}, this vitrina reads "
                f"version {FORMAT_VERSION}"
            )
        return meta

    def _write_meta(self, meta: dict[str, Any]) -> None:
        from vitrina.io.files import atomic_write_text

        atomic_write_text(self.path / META_NAME, json.dumps(meta, indent=2) + "\n")

    def _check_embedder(self, fingerprint: str | None, dim: int | None = None) -> None:
        if dim is not None and int(dim) != self.dim:
            raise GalleryError(f"{self.path}: gallery vectors are {self.dim}-d, these are {dim}-d")
        if fingerprint is not None and self.fingerprint and fingerprint != self.fingerprint:
            raise GalleryError(
                f"{self.path}: enrolled with {self.embedder_label} (fingerprint "
                f"{self.fingerprint}); these faces were embedded with fingerprint {fingerprint}: "
                "vectors of different models cannot be compared"
            )

    # ------------------------------------------------------------------ locking

    @contextmanager
    def _reading(self) -> Iterator[_Snapshot]:
        """Shared lock; the current templates (cached while the revision is unchanged)."""
        from vitrina.search import Index

        with _flock(self.path / LOCK_NAME, exclusive=False) as lock:
            if self._needs_recovery():
                lock.upgrade()  # a writer died mid-change: finish or undo what it began
                self._recover()
                lock.downgrade()
            meta = self._read_meta()
            self._rule = DecisionRule.from_dict(meta.get("rule") or {})
            self._calibration = meta.get("calibration")
            rev = int(meta.get("revision", 0))
            if self._cache is None or self._cache.revision != rev:
                with Index.open(self.path / INDEX_DIR) as idx:
                    self._cache = _Snapshot.read(idx, rev)
            yield self._cache

    @contextmanager
    def _writing(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Exclusive lock; (index opened inside it, gallery.json with the revision bumped)."""
        from vitrina.search import Index

        with _flock(self.path / LOCK_NAME, exclusive=True):
            self._recover()
            meta = self._read_meta()
            self._rule = DecisionRule.from_dict(meta.get("rule") or {})
            self._calibration = meta.get("calibration")
            meta["revision"] = int(meta.get("revision", 0)) + 1
            self._write_meta(meta)  # before any change: readers reload from here on
            self._cache = None
            mark = self.path / WRITING_MARK
            os.close(os.open(mark, os.O_WRONLY | os.O_CREAT, 0o644))
            with Index.open(self.path / INDEX_DIR) as idx:
                try:
                    yield idx, meta
                except BaseException:
                    # Undo now what the next user would undo, unless a rename journal still
                    # owns chips that no row names yet (the next user replays it first).
                    if not (self.path / RENAME_JOURNAL).exists():
                        with suppress(Exception):
                            self._sweep_chips(idx)
                            mark.unlink()
                    raise
            mark.unlink()
            self._rule = DecisionRule.from_dict(meta.get("rule") or {})
            self._calibration = meta.get("calibration")

    def _needs_recovery(self) -> bool:
        return (
            (self.path / RENAME_JOURNAL).exists()
            or (self.path / WRITING_MARK).exists()
            or (not self._read_meta().get(CHIPS_SWEPT) and os.access(self.path, os.W_OK))
        )

    def _recover(self) -> None:
        """Under the exclusive lock: finish a rename, and sweep the chips of a writer that
        died mid-change (module docstring). A gallery made before chips were pending may hold
        chips of enrolments killed before their commit: it is swept once."""
        from vitrina.search import Index

        if (self.path / RENAME_JOURNAL).exists():
            self._replay_rename()
        mark = self.path / WRITING_MARK
        meta = self._read_meta()
        if mark.exists() or not meta.get(CHIPS_SWEPT):
            with Index.open(self.path / INDEX_DIR) as idx:
                self._sweep_chips(idx)
            if not meta.get(CHIPS_SWEPT):
                meta[CHIPS_SWEPT] = True
                self._write_meta(meta)
            mark.unlink(missing_ok=True)

    def _sweep_chips(self, idx: Any) -> tuple[int, int]:
        """Pending chips of committed templates get their names; every chip without a
        template is deleted. Returns (named, deleted)."""
        referenced = {str(it["path"]) for it in idx.items()}
        named = deleted = 0
        chips = self.path / CHIPS_DIR
        for folder in sorted(chips.iterdir()) if chips.is_dir() else []:
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                own = f.name[len(PENDING_CHIP) :] if f.name.startswith(PENDING_CHIP) else f.name
                rel = f"{CHIPS_DIR}/{folder.name}/{own}"
                if f.name != own and rel in referenced and not (folder / own).exists():
                    os.replace(f, folder / own)
                    named += 1
                elif f.name != own or rel not in referenced:
                    f.unlink()
                    deleted += 1
            with suppress(OSError):
                folder.rmdir()  # only when empty
        return named, deleted

    # ------------------------------------------------------------------ people

    def people(self) -> list[Person]:
        """Everyone enrolled, by name."""
        with self._reading() as snap:
            return [self._person(snap, n) for n in snap.names]

    def write_sheet(self, path: str | os.PathLike[str]) -> Path:
        """A contact sheet PNG of the gallery: one row per person, the chips of their
        templates (the faces as enrolled), so a wrong enrolment is seen at a glance. Chips
        are private: the sheet is written where asked, atomically, and nowhere else."""
        from vitrina.report.pictures import check_writable, write_people_sheet

        check_writable(path, option="--sheet")
        people = self.people()
        return write_people_sheet(
            [(p.name, p.chips) for p in people], path, spreads=[p.spread for p in people]
        )

    def person(self, name: str) -> Person:
        with self._reading() as snap:
            name = self._known(snap, name)
            self._require(snap, name)
            return self._person(snap, name)

    def templates(self, name: str) -> np.ndarray:
        """(n, dim) float32: the person's template vectors."""
        with self._reading() as snap:
            name = self._known(snap, name)
            self._require(snap, name)
            return snap.vectors[list(snap.rows_of(name))].copy()

    def _person(self, snap: _Snapshot, name: str) -> Person:
        rows = snap.rows_of(name)
        spread = snap.spread[snap.names.index(name)]
        return Person(
            name=name,
            templates=len(rows),
            photos=[snap.keys[r] for r in rows],
            chips=[self.path / snap.chips[r] for r in rows],
            spread=None if np.isnan(spread) else float(spread),
        )

    @staticmethod
    def _known(snap: _Snapshot, name: str) -> str:
        """``name`` as enrolled: as given, or the enrolled name it equals once both are in NFC
        (galleries made before names were normalised may hold other forms); else ``name`` in
        NFC."""
        if name in snap.names:
            return name
        stored = _stored_name(name)
        if stored in snap.names:
            return stored
        for other in snap.names:
            if _stored_name(other) == stored:
                return other
        return stored

    def _resolve(self, snap: _Snapshot, name: str) -> str:
        """The name to enroll under: an enrolled person's name as stored (kept usable even
        when it predates today's rules), else a new name that passes
        :func:`check_person_name`."""
        if isinstance(name, str):
            known = self._known(snap, name)
            if known in snap.names:
                return known
        return check_person_name(name)

    def name_for(self, name: str) -> str:
        """``name`` as :meth:`enroll` would store it, or :class:`GalleryError` when it is not
        an enrolled name and not allowed as a new one (checked before anything is written)."""
        with self._reading() as snap:
            return self._resolve(snap, name)

    def _require(self, snap: _Snapshot, name: str) -> None:
        if name not in snap.names:
            from vitrina.registry import suggest

            raise UnknownNameError(
                f"{self.path}: no person named {name!r} in the gallery{suggest(name, snap.names)}"
            )

    # ------------------------------------------------------------------ enroll

    def enroll(
        self,
        name: str,
        photo_faces: PhotoFaces | Iterable[PhotoFaces] | str | os.PathLike[str] | Iterable[Any],
        *,
        fingerprint: str | None = None,
    ) -> EnrollReport:
        """Add the faces of ``photo_faces`` (photo paths, or :class:`PhotoFaces` from a
        pipeline) as templates of ``name`` (a new or existing person). One face per photo: the
        largest when there are several. ``fingerprint`` (the embedder's), when given, must
        match the gallery's."""
        given = name
        name = self.name_for(given)  # a bad name fails before any photo is read
        self._check_embedder(fingerprint)
        photos = self._photos(photo_faces)
        report = EnrollReport(name)
        chosen: list[tuple[PhotoFaces, Face]] = []
        for pf in photos:
            if pf.error:
                report.unreadable.append((str(pf.path), pf.error))
            elif not pf.faces:
                report.no_face.append(str(pf.path))
            else:
                face = max(pf.faces, key=lambda f: (_face_area(f), -f.index))
                if len(pf.faces) > 1:
                    report.several_faces.append((str(pf.path), len(pf.faces), face.index))
                self._check_vector(face, pf)
                chosen.append((pf, face))
        with self._writing() as (idx, _meta):
            snap = _Snapshot.read(idx, -1)
            name = report.name = self._resolve(snap, given)
            self._check_new_name(snap, name)
            report.new_person = name not in snap.names
            added, already = self._add_faces(idx, snap, name, chosen)
            report.added, report.already = added, already
            if not added:
                report.new_person = False
        return report

    def _check_vector(self, face: Face, pf: PhotoFaces) -> None:
        v = _as_vector(face)
        if v.shape[0] != self.dim:
            raise GalleryError(
                f"{pf.path}: face {face.index} has a {v.shape[0]}-d vector, the gallery "
                f"{self.path} holds {self.dim}-d ones"
            )
        if not np.isfinite(v).all():
            raise GalleryError(f"{pf.path}: face {face.index} has NaN or infinite values")

    def _check_new_name(self, snap: _Snapshot, name: str) -> None:
        """A new name may not differ from an existing one only by case or by look-alike
        characters (chip folders would clash on case-insensitive file systems, and people
        could not tell the two apart)."""
        if name in snap.names:
            return
        key = _lookalike_key(name)
        for other in snap.names:
            if _lookalike_key(other) == key:
                how = "case" if other.casefold() == name.casefold() else "look-alike characters"
                raise GalleryError(
                    f"{self.path}: {name!r} differs from the enrolled {other!r} only by {how}; "
                    f"use {other!r}"
                )

    def _add_faces(
        self, idx: Any, snap: _Snapshot, name: str, chosen: Sequence[tuple[PhotoFaces, Face]]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Write the chips, then add the vectors (inside the exclusive lock)."""
        from vitrina.io.files import atomic_write_bytes, fsync_dir

        owner = {k: snap.names[self._owner_index(snap, r)] for r, k in enumerate(snap.keys)}
        written: list[tuple[Path, Path]] = []
        taken = set(snap.chips)
        added: list[str] = []
        already: list[tuple[str, str]] = []
        vectors, metas = [], []
        folder = self.path / CHIPS_DIR / name
        for pf, face in chosen:
            key = _face_key(pf, face)
            if key in owner:
                already.append((str(pf.path), owner[key]))
                continue
            digest = key.split(":", 1)[0]
            rel = f"{CHIPS_DIR}/{name}/{digest[:16]}-{face.index}.png"
            if rel in taken:  # two photos sharing a 16-digit prefix: use the full digest
                rel = f"{CHIPS_DIR}/{name}/{digest}-{face.index}.png"
            folder.mkdir(parents=True, exist_ok=True)
            text = {
                "source": str(pf.path),
                "box": json.dumps(face.box.to_dict()),
                "detector": face.detector,
                "key": key,
                "person": name,
            }
            final = self.path / rel
            pending = final.with_name(PENDING_CHIP + final.name)  # named once committed
            atomic_write_bytes(pending, _png_bytes(face.chip, text))
            written.append((pending, final))
            owner[key] = name
            taken.add(rel)
            vectors.append(_as_vector(face))
            metas.append({"path": rel, "sha256": key, "label": name})
            added.append(str(pf.path))
        if vectors:
            idx.add_vectors(np.stack(vectors), metas, fingerprint=None)  # the commit point
        for pending, final in written:
            os.replace(pending, final)
        if written:
            fsync_dir(folder)
        return added, already

    @staticmethod
    def _owner_index(snap: _Snapshot, row: int) -> int:
        return int(np.searchsorted(snap.starts, row, side="right")) - 1

    # ------------------------------------------------------------------ forget / rename

    def forget(self, name: str) -> Forgotten:
        """Remove every template of ``name`` and every chip stored for them."""
        with self._writing() as (idx, _meta):
            snap = _Snapshot.read(idx, -1)
            name = self._known(snap, name)
            if name not in snap.names:
                name = check_person_name(name)  # never rmtree a path made from a bad name
            folder = self.path / CHIPS_DIR / name
            if name not in snap.names:
                if folder.is_dir():  # chips left by an interrupted forget
                    n = sum(1 for _ in folder.glob("*.png"))
                    shutil.rmtree(folder)
                    return Forgotten(name, 0, n)
                self._require(snap, name)
            rows = list(snap.rows_of(name))
            idx.remove([snap.chips[r] for r in rows])
            n_chips = sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0
            failed: list[str] = []
            if folder.is_dir():  # privacy: a chip that stays must be reported, not ignored
                shutil.rmtree(folder, onerror=lambda _f, path, exc: failed.append(f"{exc[1]}"))
        if failed:
            raise GalleryError(
                f"{folder}: {name!r} is forgotten ({len(rows)} template(s)), but "
                f"{len(failed)} of the chip files could not be deleted ({failed[0]}); run "
                "forget again to delete them"
            )
        return Forgotten(name, len(rows), n_chips)

    def rename(self, old: str, new: str, *, merge: bool = False) -> Person:
        """Rename a person (their chips move to the new folder). Refused when ``new`` is
        already enrolled unless ``merge=True``, which adds ``old``'s templates to ``new``."""
        given = new
        new = self.name_for(given)
        with self._writing() as (idx, _meta):
            snap = _Snapshot.read(idx, -1)
            new = self._resolve(snap, given)
            old = self._known(snap, old)
            self._require(snap, old)
            if old == new:
                return self._person(snap, old)
            if new in snap.names and not merge:
                raise GalleryError(
                    f"{self.path}: {new!r} is already enrolled; pass merge=True (--merge) to "
                    f"add {old!r}'s templates to {new!r}"
                )
            if _lookalike_key(old) != _lookalike_key(new):
                self._check_new_name(snap, new)
            rows = list(snap.rows_of(old))
            journal = {
                "old": old,
                "new": new,
                "rows": [
                    {
                        "key": snap.keys[r],
                        "old_chip": snap.chips[r],
                        "new_chip": f"{CHIPS_DIR}/{new}/{Path(snap.chips[r]).name}",
                        "vector": [float(v) for v in snap.vectors[r]],
                    }
                    for r in rows
                ],
            }
            from vitrina.io.files import atomic_write_text

            atomic_write_text(self.path / RENAME_JOURNAL, json.dumps(journal))
            self._apply_rename(idx, journal)
            after = _Snapshot.read(idx, -1)
            return self._person(after, new)

    def _replay_rename(self) -> None:
        """Finish a rename that a crash interrupted (caller holds the exclusive lock)."""
        from vitrina.search import Index

        try:
            journal = json.loads((self.path / RENAME_JOURNAL).read_text(encoding="utf-8"))
        except FileNotFoundError:  # another process finished it while we waited for the lock
            return
        with Index.open(self.path / INDEX_DIR) as idx:
            self._apply_rename(idx, journal)

    def _apply_rename(self, idx: Any, journal: dict[str, Any]) -> None:
        """Move chips, remove the old rows, add the new ones, delete the journal. Each step
        can be repeated after a crash without loss or duplicates."""
        rows = journal["rows"]
        (self.path / CHIPS_DIR / journal["new"]).mkdir(parents=True, exist_ok=True)
        for r in rows:
            src, dst = self.path / r["old_chip"], self.path / r["new_chip"]
            if src.exists() and not dst.exists():
                os.replace(src, dst)
        idx.remove([r["old_chip"] for r in rows])
        if rows:
            vecs = np.asarray([r["vector"] for r in rows], dtype=np.float32)
            metas = [
                {"path": r["new_chip"], "sha256": r["key"], "label": journal["new"]} for r in rows
            ]
            idx.add_vectors(vecs, metas)
        old_folder = self.path / CHIPS_DIR / journal["old"]
        with suppress(OSError):
            old_folder.rmdir()  # only when empty
        (self.path / RENAME_JOURNAL).unlink()

    # ------------------------------------------------------------------ the rule

    @property
    def rule(self) -> DecisionRule:
        """The decision rule in use (dlib's plain 0.6 until calibrated)."""
        self._refresh_meta()
        return self._rule

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The stored calibration figures, or None before :meth:`calibrate`."""
        self._refresh_meta()
        return self._calibration

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def threshold_source(self) -> str:
        c = self.calibration
        return self._source_text(c)

    @staticmethod
    def _source_text(c: dict[str, Any] | None) -> str:
        if c is None:
            return (
                f"default: dlib's {DEFAULT_THRESHOLD} (not calibrated; run `vitrina faces "
                "calibrate`)"
            )
        text = (
            f"calibrated {c['date'][:10]} for FAR {c['far']:g} on {c['n_faces']} faces of "
            f"{c['n_people']} people"
        )
        if c.get("light_dims"):  # absent in galleries calibrated before it existed
            text += f", {c['light_dims']} light directions removed"
        u = c.get("uncertainty")  # absent in galleries calibrated before it was measured
        if u and not u.get("promised", True):
            text += " (too few to promise that FAR: see `vitrina faces calibrate`)"
        return text

    def _refresh_meta(self) -> None:
        with _flock(self.path / LOCK_NAME, exclusive=False):
            meta = self._read_meta()
        self._rule = DecisionRule.from_dict(meta.get("rule") or {})
        self._calibration = meta.get("calibration")

    # ------------------------------------------------------------------ identify / verify

    def identify(
        self,
        photo_faces: PhotoFaces | Iterable[PhotoFaces] | str | os.PathLike[str] | Iterable[Any],
        *,
        enroll_unknown: bool = False,
        fingerprint: str | None = None,
        rule: DecisionRule | None = None,
    ) -> Identifications:
        """One :class:`Identification` per face, in photo order then face order (a photo with
        no face, or an unreadable one, gives none: see its ``faces`` / ``error``).

        ``photo_faces``: photos as they come -- paths, PIL images, numpy arrays, torch
        tensors, one or a list -- found and described with the gallery's :meth:`pipeline`; or
        :class:`PhotoFaces` already found. The answer is a list that shows the face chips in
        a notebook and has ``to_pandas()``.

        ``enroll_unknown``: every face decided "unknown" is enrolled as a new person
        ``person-NNNN`` (the next number after the highest in use), photo by photo under the
        exclusive lock, so a later face of them -- in this call or another -- is recognized.
        Faces of one photo are decided together, before any of them is enrolled (two faces
        in one photo are two different people). ``rule`` overrides the stored rule for this
        call (results then say ``calibrated=False`` and name the rule given)."""
        self._check_embedder(fingerprint)
        photos = self._photos(photo_faces)
        out: list[Identification] = []
        if not enroll_unknown:
            batch = [pf for pf in photos if pf.faces]
            for pf in batch:
                for f in pf.faces:
                    self._check_vector(f, pf)
            with self._reading() as snap:
                return Identifications(self._decide(snap, batch, rule))
        for pf in photos:
            if not pf.faces:
                continue
            for f in pf.faces:
                self._check_vector(f, pf)
            with self._reading() as snap:
                rows = self._decide(snap, [pf], rule)
            if all(r.known for r in rows):  # nothing to enroll: no exclusive lock needed
                out.extend(rows)
                continue
            with self._writing() as (idx, _meta):  # decide again: another may have enrolled
                snap = _Snapshot.read(idx, -1)
                rows = self._decide(snap, [pf], rule)
                number = _next_person_number(snap.names)
                for row, face in zip(rows, pf.faces, strict=True):
                    if row.known:
                        continue
                    name = NEW_PERSON.format(number)
                    number += 1
                    self._add_faces(idx, snap, name, [(pf, face)])
                    row.name, row.enrolled = name, True
                    row.reason = f"unknown ({row.reason}); enrolled as new person {name}"
            out.extend(rows)
        return Identifications(out)

    def _decide(
        self, snap: _Snapshot, photos: Sequence[PhotoFaces], given: DecisionRule | None
    ) -> list[Identification]:
        faces = [(pf, f) for pf in photos for f in pf.faces]
        if not faces:
            return []
        if given is None:
            rule, calibrated = self._rule, self._calibration is not None
            source = self._source_text(self._calibration)
        else:
            rule, calibrated, source = given, False, f"given rule: {given.describe()}"
        q = np.stack([_as_vector(f) for _, f in faces])
        templates, spread = snap.vectors, snap.spread
        if rule.light_basis is not None:  # compared as the rule was solved: light removed
            q, templates = rule.project(q), rule.project(snap.vectors)
            spread = template_spread(templates, snap.starts)
        per = person_distances(q, templates, snap.starts)
        best, d1, second, d2 = top_two(per)
        spread_best = np.full(len(q), np.nan)
        if snap.names:
            spread_best = np.where(best >= 0, spread[np.maximum(best, 0)], np.nan)
        accepted = rule.accept(d1, d2, spread_best)
        thresholds = rule.person_thresholds(spread_best)
        out = []
        for i, (pf, f) in enumerate(faces):
            b = snap.names[best[i]] if best[i] >= 0 else None
            s = snap.names[second[i]] if second[i] >= 0 else None
            has_d1, has_d2 = np.isfinite(d1[i]), np.isfinite(d2[i])
            out.append(
                Identification(
                    photo=str(pf.path),
                    face=f.index,
                    box=f.box,
                    name=b if accepted[i] and b is not None else UNKNOWN,
                    person=b,
                    distance=float(d1[i]) if has_d1 else None,
                    runner_up=s,
                    runner_up_distance=float(d2[i]) if has_d2 else None,
                    threshold=float(thresholds[i]),
                    margin=float(d2[i] - d1[i]) if has_d1 and has_d2 else None,
                    reason=rule.explain(
                        float(d1[i]), float(d2[i]), float(thresholds[i]), b or "", s
                    ),
                    calibrated=calibrated,
                    threshold_source=source,
                    detector=f.detector,
                    chip=f.chip if f.chip is not None and f.chip.size else None,
                )
            )
        return out

    def _folder_vectors(self, folder: Path) -> dict[str, list[np.ndarray]]:
        from vitrina.data import scan_folder

        scan = scan_folder(folder, min_classes=1)
        by_path = {s.path: scan.classes[s.label] for s in scan.samples}
        out: dict[str, list[np.ndarray]] = {}
        for pf in self.pipeline().process(list(by_path)):
            if pf.faces:
                face = max(pf.faces, key=lambda f: (_face_area(f), -f.index))
                out.setdefault(by_path[pf.path], []).append(_as_vector(face))
        return out

    def verify(self, face_a: Face | np.ndarray, face_b: Face | np.ndarray) -> Verification:
        """Are two faces the same person? Pairwise threshold: the calibrated one at the
        calibration's FAR, else dlib's 0.6."""
        a, b = _as_vector(face_a), _as_vector(face_b)
        for v in (a, b):
            if v.shape[0] != self.dim:
                raise GalleryError(f"verify: a {v.shape[0]}-d vector, the gallery is {self.dim}-d")
        self._refresh_meta()  # one read: the threshold and the rule it was solved with
        c, rule = self._calibration, self._rule
        t = float(c["threshold"]) if c else DEFAULT_THRESHOLD
        d = verify_distance(rule.project(a), rule.project(b))  # light removed, as solved
        return Verification(d <= t, d, t)

    # ------------------------------------------------------------------ calibrate

    def calibrate(
        self,
        labelled: Mapping[str, Sequence[np.ndarray]]
        | Iterable[tuple[str, np.ndarray]]
        | str
        | os.PathLike[str]
        | None = None,
        far: float = 0.01,
        *,
        light_dims: int = 0,
        pipeline: Any = None,
    ) -> CalibrationReport:
        """Measure genuine/impostor distances on ``labelled`` face vectors ({person: vectors}
        or (person, vector) pairs; a folder with a sub-folder of photos per person, each
        photo's largest face; None: the gallery's own templates), choose the decision
        rule by the leave-one-identity-out simulation (:mod:`vitrina.faces.decision`) and
        store rule and figures in gallery.json. It sees only what it is given.

        ``light_dims``: first learn that many light directions from the enrolled faces' chips
        relit from the left and the right (:mod:`vitrina.faces.light_projection`); the rule
        is solved on vectors with them projected out, and identification and verification
        project them out too. 0: vectors as they are (the rule of galleries before it).
        ``pipeline``: describes the relit chips (default: the gallery's :meth:`pipeline`)."""
        from vitrina.evaluate.verification import pair_distances, verification_report

        if not 0 < float(far) < 1:
            raise GalleryError(f"far must be between 0 and 1, got {far}")
        far = float(far)
        if isinstance(light_dims, bool) or not isinstance(light_dims, int) or light_dims < 0:
            raise GalleryError(f"light dims must be a whole number >= 0, not {light_dims!r}")
        if isinstance(labelled, str | os.PathLike):
            labelled = self._folder_vectors(Path(labelled))
        if labelled is None:
            with self._reading() as snap:
                x = snap.vectors.astype(np.float64)
                labels = [snap.names[self._owner_index(snap, r)] for r in range(len(x))]
            source = "gallery"
        else:
            x, labels = self._labelled_arrays(labelled)
            source = "labelled"
        n_people = len(set(labels))
        if len(x) < 3 or n_people < 3:
            raise DataError(
                f"calibration needs faces of at least 3 people, got {len(x)} faces of "
                f"{n_people} (a {source} set)"
            )
        basis, light_faces = None, 0
        if light_dims:
            basis, light_faces = self._light_basis(light_dims, pipeline)
            x = project(x, basis)
        n_pairs = len(x) * (len(x) - 1) // 2
        distances, same = pair_distances(
            x, labels, metric="euclidean", max_pairs=None if n_pairs <= 5_000_000 else 5_000_000
        )
        ver = verification_report(distances, same, fars=(far, 1e-3), metric="euclidean")
        th = ver.thresholds_dict(far)
        scale = float(np.median(distances[~same]))
        osc = calibrate_rule(x, labels, far=far, cap=float(th["threshold"]), scale=scale)
        if basis is not None:
            osc.rule = replace(osc.rule, light_basis=tuple(map(tuple, basis.tolist())))
        report = CalibrationReport(
            far=far,
            threshold=float(th["threshold"]),
            tar=float(th["tar"]),
            eer=float(th["eer"]),
            n_genuine=int(th["n_genuine"]),
            n_impostor=int(th["n_impostor"]),
            n_people=n_people,
            n_faces=len(x),
            source=source,
            date=_now_iso(),
            rule=osc.rule,
            openset=osc.chosen,
            plain=osc.plain,
            default=osc.default,
            verification=ver,
            uncertainty=osc.uncertainty,
            light_dims=int(light_dims),
            light_faces=light_faces,
        )
        stored = report.to_dict()
        stored["rule"].pop("light_basis", None)  # stored once, with the rule in use
        stored["verification"] = th
        stored["grid"] = osc.grid
        with self._writing() as (_idx, meta):
            meta["rule"] = osc.rule.to_dict()
            meta["calibration"] = stored
            self._write_meta(meta)
        return report

    def _light_basis(self, dims: int, pipeline: Any) -> tuple[np.ndarray, int]:
        """The light directions learned from the enrolled faces' stored chips (at most
        :data:`~vitrina.faces.light_projection.MAX_FACES`, evenly spaced over the people),
        and how many chips they were learned from."""
        from PIL import Image

        from vitrina.faces.light_projection import learn_light_basis, spaced

        with self._reading() as snap:
            paths = spaced([self.path / c for c in snap.chips])
        chips = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    chips.append(np.asarray(im.convert("RGB")))
            except OSError:  # a chip lost or unreadable: the others still show the light
                continue
        if not chips:
            raise DataError(
                f"{self.path}: learning the light directions needs the enrolled faces' chips, "
                f"and the gallery has none{' readable' if paths else ''}; enroll photos first "
                "(or calibrate with --light-dims 0)"
            )
        pipe = pipeline if pipeline is not None else self.pipeline()
        basis = learn_light_basis(chips, pipe.describe, dims, correct=pipe.finder.correct_chip)
        return basis, len(chips)

    def _labelled_arrays(
        self, labelled: Mapping[str, Sequence[np.ndarray]] | Iterable[tuple[str, np.ndarray]]
    ) -> tuple[np.ndarray, list[str]]:
        if isinstance(labelled, Mapping):
            pairs = [(str(k), v) for k, vs in labelled.items() for v in vs]
        else:
            pairs = [(str(k), v) for k, v in labelled]
        if not pairs:
            raise DataError("calibration got no labelled faces")
        rows = []
        for person, v in pairs:
            a = np.asarray(v, dtype=np.float64).reshape(-1)
            if a.shape[0] != self.dim:
                raise DataError(
                    f"calibration: a face of {person!r} has a {a.shape[0]}-d vector, the "
                    f"gallery {self.path} holds {self.dim}-d ones"
                )
            if not np.isfinite(a).all():
                raise DataError(f"calibration: a face of {person!r} has NaN or infinite values")
            rows.append(a)
        return np.stack(rows), [p for p, _ in pairs]


def _next_person_number(names: Sequence[str]) -> int:
    used = [int(m.group(1)) for n in names if (m := _NEW_PERSON_RE.fullmatch(n))]
    return max(used, default=0) + 1


class _Lock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def upgrade(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def downgrade(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)


@contextmanager
def _flock(path: Path, *, exclusive: bool) -> Iterator[_Lock]:
    """Hold an flock on ``path`` (created if missing) for the block."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive or not path.exists():
            raise
        fd = os.open(path, os.O_RDONLY)  # a read-only gallery can still be read
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield _Lock(fd)
    finally:
        os.close(fd)  # closing releases the lock
