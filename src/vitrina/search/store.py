"""What an index trusts on disk, checked: the faiss file's checksum, its vectors, SQLite errors.

* ``vectors.faiss`` is written and read through faiss' callback I/O, so its sha256 is computed
  in the same pass as the bytes move (no second read of a file that may be gigabytes). The
  digest is recorded in SQLite in the transaction that commits the update, and compared when
  the file is read back: a flipped bit or two swapped rows change it.
* Vectors themselves are checked where that is cheap: finite everywhere, and of unit length in
  a cosine index (a damaged float shows up as a norm of 1e10, not as a similarity of 1.0).
* Any ``sqlite3`` error (a damaged ``meta.sqlite`` gives "database disk image is malformed" or
  "Could not decode to UTF-8") becomes one :class:`IndexDamagedError` line naming the index and
  what to do, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.errors import VitrinaError

__all__ = [
    "NORM_TOLERANCE",
    "IndexDamagedError",
    "IndexFolderError",
    "damaged_rows",
    "database_error",
    "is_database_error",
    "read_faiss",
    "storage_vectors",
    "write_faiss",
]

NORM_TOLERANCE = 1e-3  # float32 L2-normalised vectors are within ~1e-6 of unit length
_CHUNK = 1 << 20


class IndexFolderError(VitrinaError):
    """An index folder that cannot be used (missing, foreign, half-written, other version/model)."""


class IndexDamagedError(IndexFolderError):
    """An index whose files are damaged beyond what opening it can repair."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise VitrinaError("faiss is not installed: pip install faiss-cpu") from exc
    return faiss


def write_faiss(structure: Any, file: Path) -> str:
    """Serialise ``structure`` into ``file`` (already created, e.g. a temp name) and return
    the sha256 of the bytes written."""
    faiss = _faiss()
    digest = hashlib.sha256()
    with open(file, "wb") as fh:

        def write(chunk: bytes) -> None:
            digest.update(chunk)
            fh.write(chunk)

        faiss.write_index(structure, faiss.PyCallbackIOWriter(write, _CHUNK))
    return digest.hexdigest()


def read_faiss(file: Path) -> tuple[Any, str | None]:
    """(structure, sha256 of the whole file), or (None, None) when it is missing or faiss
    cannot parse it."""
    faiss = _faiss()
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as fh:

            def read(n: int) -> bytes:
                chunk = fh.read(n)
                digest.update(chunk)
                return chunk

            structure = faiss.read_index(faiss.PyCallbackIOReader(read, _CHUNK))
            while rest := fh.read(_CHUNK):  # trailing bytes are part of what was recorded
                digest.update(rest)
    except Exception:
        return None, None
    return structure, digest.hexdigest()


def storage_vectors(structure: Any) -> np.ndarray | None:
    """The (N, d) vectors held by an ``IndexIDMap2`` over a flat or HNSW-flat index, in the
    order of its id map, without copying; None for structures that do not store them flat."""
    faiss = _faiss()
    inner = faiss.downcast_index(structure.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if not isinstance(inner, faiss.IndexFlat):
        return None
    n, d = inner.ntotal, inner.d
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    return faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)


def damaged_rows(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Positions of vectors that cannot be right: not finite, or (cosine) not of unit length."""
    x = np.asarray(vectors, dtype=np.float32)
    found = []
    step = max(1, (1 << 24) // max(x.shape[1] if x.ndim == 2 else 1, 1))  # ~128 MB at a time
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(x), step):
            chunk = x[start : start + step].astype(np.float64)
            bad = ~np.isfinite(chunk).all(axis=1)
            if metric == "cosine":
                norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
                bad |= ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)
            found.append(np.flatnonzero(bad) + start)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def database_error(path: Path, exc: Exception) -> IndexFolderError:
    """One line for a ``sqlite3`` error on the index at ``path``: damaged (with the command
    that rebuilds it), busy, read-only or full, each with what to do."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    db = path / "meta.sqlite"
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED") or "locked" in text:
        return IndexFolderError(f"{db}: busy (another process is writing it); try again")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return IndexFolderError(
            f"{db}: read-only ({text}); make the index folder writable to change it"
        )
    if name.startswith("SQLITE_FULL") or "full" in text:
        return IndexFolderError(f"{db}: disk full ({text}); free space and try again")
    if name.startswith("SQLITE_IOERR") or name.startswith("SQLITE_CANTOPEN"):
        return IndexFolderError(f"{db}: cannot be read ({text}); check the disk and the folder")
    return IndexDamagedError(f"{db}: damaged ({text}); {rebuild_hint(path)}")


def rebuild_hint(path: Path) -> str:
    """How to rebuild the index at ``path`` from its photos (root and model from index.json,
    the readable summary, when it survived)."""
    root = model = None
    try:
        summary = json.loads((path / "index.json").read_text(encoding="utf-8"))
        root = summary.get("root")
        model = (summary.get("spec") or {}).get("model")
    except (OSError, ValueError, AttributeError):
        pass
    cmd = f"vitrina index build {root or 'PHOTOS'} --model {model or 'MODEL'} --out NEW_INDEX"
    return f"rebuild it from the photos: `{cmd}` (the damaged index is left as it is)"


def is_database_error(exc: BaseException) -> bool:
    """Errors that mean "meta.sqlite could not be read", whatever layer raised them."""
    return isinstance(exc, sqlite3.Error | UnicodeDecodeError) or (
        isinstance(exc, ValueError) and "JSON" in type(exc).__name__
    )
