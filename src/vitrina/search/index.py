"""A persistent image index: faiss for the vectors, SQLite for everything else.

One folder per index::

    meta.sqlite    items (id, path, sha256, size, mtime, label, added) + removed (id)
                   + info (key, value)
    vectors.faiss  faiss.IndexIDMap2 over IndexFlat (exact), IndexHNSWFlat or IndexIVFFlat;
                   its int64 ids are the SQLite row ids
    index.json     a human-readable summary (never read back for correctness)

**Each vector is stored once**, in ``vectors.faiss`` (format 2, issue 17): 1M x 1,280-d
float32 vectors are 5.1 GB on disk and in memory, not twice that. Whatever needs the vectors
back (a change of kind, HNSW compaction, IVF retraining, the recall check's exact truth)
reads them from the loaded faiss structure: a view of faiss' own memory where it keeps them
flat (exact, HNSW), the inverted lists for IVF. Row ids are never reused (AUTOINCREMENT) and
a row's vector never changes, so the set of ids in ``vectors.faiss`` identifies the state it
was built for: on open, those ids are compared with the rows in SQLite (and its ``removed``
tombstones).

**Format 1** folders (made before; every vector also a float32 BLOB in ``meta.sqlite``, the
source of truth) open and update as they are, with their SQLite copy: a lost or damaged
``vectors.faiss`` is rebuilt from it, and a damaged stored vector is restored from a verified
faiss file. In format 2 there is no second copy to rebuild from: a damaged or lost
``vectors.faiss`` is found (checksum, norms, ids) and refused in one line with the command
that rebuilds the index from the photos.

**Commit order of an update** (add / remove):

1. the new faiss index is written to ``vectors.faiss.pending`` (temp name, fsync, rename);
2. the SQLite transaction (rows, ``generation`` + 1, counts, recall, the file's checksum)
   commits: this is the commit point;
3. ``vectors.faiss.pending`` is renamed over ``vectors.faiss``; ``index.json`` is rewritten.

A crash before 2 leaves the old SQLite state and the old ``vectors.faiss`` (a stale pending
file is ignored and deleted). A crash between 2 and 3 leaves SQLite one step ahead: ``open``
sees the ids disagree, takes the pending file if its ids and checksum match (format 1: else
rebuilds the faiss structure from the stored vectors), and says so in
:attr:`Index.recovered`. A build that never finished (``state = building``) is refused as
half-written.

**Integrity** (:mod:`vitrina.search.store`). The sha256 of the faiss file is recorded in the
commit (``faiss_sha256``) and checked when the file is read; a cosine index's vectors must be
of unit length. Any SQLite error is one line naming the index and what to do.

**Other processes.** :meth:`Index.refresh` reloads when the generation in SQLite moved (one
point query): a long-lived reader such as ``vitrina serve`` calls it before each request, so
an ``index add`` / ``remove`` is visible from the next request after it commits. A change
that left ``vectors.faiss`` as it was (an HNSW removal) reloads only the tombstones.

**Kinds.** ``exact`` = ``IndexFlatIP`` (cosine) / ``IndexFlatL2`` (euclidean). ``hnsw`` =
``IndexHNSWFlat`` (M=32, efConstruction=100), ``efSearch`` tuned up from 16 until recall@10
on a sample of stored vectors reaches 0.95. ``ivf`` = ``IndexIVFFlat`` with ~4*sqrt(N) lists,
``nprobe`` tuned the same way. ``auto`` = exact below :data:`AUTO_HNSW_THRESHOLD` (50,000)
vectors, HNSW from there on: below that size exact search over 1,280-d vectors costs a few ms
per query on a laptop CPU, above it HNSW is ~10-100x faster at recall >= 0.95.

**Removing.** exact removes in place (``remove_ids``); ivf rebuilds. HNSW cannot delete in
faiss, so in format 2 a removed item becomes a *tombstone*: its row leaves ``items`` and its
id goes to ``removed`` in the same SQLite transaction (``vectors.faiss`` is not rewritten),
and searches skip it with a faiss ``IDSelector`` (faiss' filtered HNSW search: the graph
still routes through it, it is never returned, and k live results come back when k exist).
When tombstones pass :data:`COMPACT_FRACTION` of the structure, the removal rebuilds the
graph from the live vectors (through the pending-file protocol above) and empties
``removed``; :meth:`Index.compact` does it on demand. Format 1 folders rebuild at every HNSW
removal, as before.

**Batch queries.** :meth:`Index.search_vectors` answers an (N, dim) array with numpy arrays
of ids and scores (:class:`Neighbours`), and builds no Python object per result until asked
(:meth:`Neighbours.results`, :meth:`Neighbours.paths`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from vitrina.errors import VitrinaError
from vitrina.io import IMAGE_EXTENSIONS_TEXT
from vitrina.search.store import (
    IndexDamagedError,
    IndexFolderError,
    damaged_rows,
    database_error,
    is_database_error,
    read_faiss,
    storage_vectors,
    write_faiss,
)
from vitrina.search.store import rebuild_hint as _rebuild_hint

__all__ = [
    "AUTO_HNSW_THRESHOLD",
    "COMPACT_FRACTION",
    "FORMAT_VERSION",
    "KINDS",
    "METRICS",
    "READABLE_VERSIONS",
    "AddReport",
    "Hit",
    "Index",
    "IndexDamagedError",
    "IndexFolderError",
    "Neighbours",
    "QueryResult",
    "RemoveReport",
    "SearchResults",
]

FORMAT_VERSION = 2
#: Formats this vitrina opens: 1 (vectors in meta.sqlite and vectors.faiss), 2 (vectors.faiss)
READABLE_VERSIONS = (1, 2)
METRICS = ("cosine", "euclidean")
KINDS = ("auto", "exact", "hnsw", "ivf")
AUTO_HNSW_THRESHOLD = 50_000
HNSW_M = 32
#: Graph quality at build. faiss' default of 40 caps recall below what any efSearch can fix
#: as the index grows: on clustered 1,280-d vectors, 0.985 at 200,000 and 0.946 at 1,000,000
#: (efSearch 1,024), where 100 gives 0.999 at 200,000 with efSearch 128 for 1.4x the build
#: time (``benchmarks/search_scale.py``). Indexes built with 40 keep their graph (faiss
#: stores it) and report it.
HNSW_EF_CONSTRUCTION = 100
TARGET_RECALL = 0.95
RECALL_SAMPLE = 200
RECALL_K = 10
#: HNSW tombstones beyond this fraction of the structure trigger a compaction at removal.
COMPACT_FRACTION = 0.1
_ADD_CHUNK = 16_384  # vectors normalised and handed to faiss at a time (bounded extra memory)

DB_NAME = "meta.sqlite"
FAISS_NAME = "vectors.faiss"
PENDING_NAME = "vectors.faiss.pending"
JSON_NAME = "index.json"

ProgressFn = Callable[[int, int], None]


F = TypeVar("F", bound=Callable[..., Any])


def _db_guard(method: F) -> F:
    """SQLite errors inside ``method`` become one line naming the index and the remedy."""

    @functools.wraps(method)
    def wrapper(self: Index, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if is_database_error(exc) and not isinstance(exc, VitrinaError):
                raise database_error(self.path, exc) from None
            raise

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- results


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    label: str
    sha256: str | None
    distance: float
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_HIT_COLUMNS = ("query", "rank", "id", "path", "label", "similarity", "distance", "error")
_SHOWN_HITS = 8  # hits per query a notebook shows
_SHOWN_QUERIES = 20


@dataclass
class QueryResult:
    """The hits for one query, best first; ``error`` set (and no hits) if it was unreadable.

    ``item``: the query as passed (a path, an image in memory), for the notebook thumbnail."""

    query: str
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
    item: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "error": self.error, "hits": [h.to_dict() for h in self.hits]}

    def _records(self) -> list[dict[str, Any]]:
        if not self.hits:
            return [{"query": self.query, "error": self.error}]
        return [{"query": self.query, **h.to_dict(), "error": None} for h in self.hits]

    def _row(self) -> list[Any]:
        from vitrina.engine import thumbnail
        from vitrina.report.notebook import Error, Tile

        q = thumbnail(self.item) if self.item is not None else None
        row: list[Any] = [Tile(q, self.query)]
        if self.error:
            return [*row, Error(self.error)]
        for h in self.hits[:_SHOWN_HITS]:
            row.append(Tile(thumbnail(h.path), f"{h.rank}. {h.label} {h.similarity:.3f}"))
        return row

    def _repr_html_(self) -> str:
        from vitrina.report.notebook import html_table

        cols = ["query", *(f"hit {i + 1}" for i in range(min(len(self.hits), _SHOWN_HITS)))]
        return html_table(f"{len(self.hits)} hits for {self.query}", cols, [self._row()])

    def to_pandas(self) -> Any:
        """One row per hit: query, rank, id, path, label, similarity, distance, error."""
        from vitrina.report.notebook import dataframe

        return dataframe(self._records(), _HIT_COLUMNS)


class SearchResults(list[QueryResult]):
    """:meth:`Index.search`'s answer, one :class:`QueryResult` per query in order: a list that
    shows each query and its best hits as thumbnails in a notebook, and becomes one pandas
    table (a row per hit) with :meth:`to_pandas`."""

    def _repr_html_(self) -> str:
        from vitrina.report.notebook import html_table

        width = max((min(len(r.hits), _SHOWN_HITS) for r in self), default=0)
        cols = ["query", *(f"hit {i + 1}" for i in range(width))]
        rows = [r._row() for r in self[:_SHOWN_QUERIES]]
        return html_table(f"search: {len(self)} queries", cols, rows, more=len(self) - len(rows))

    def to_pandas(self) -> Any:
        """One row per hit of every query (a query without hits: one row with its error)."""
        from vitrina.report.notebook import dataframe

        return dataframe([rec for r in self for rec in r._records()], _HIT_COLUMNS)


@dataclass
class Neighbours:
    """The answer to a batch of vector queries as arrays, best first per row: ``ids`` (row ids,
    -1 where fewer than k items exist), ``scores`` (faiss' own: inner product for cosine,
    squared L2 for euclidean), and, computed when first asked, ``distances`` (cosine:
    1 - similarity; euclidean: L2) and ``similarities`` (cosine similarity, or
    1 / (1 + distance)). Nothing per result is a Python object until :meth:`results` or
    :meth:`paths` is called."""

    ids: np.ndarray
    scores: np.ndarray
    metric: str
    _rows: Callable[[set[int]], dict[int, tuple[str, str, str | None]]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def distances(self) -> np.ndarray:
        if self.metric == "cosine":
            d = np.maximum(0.0, 1.0 - self.scores)
        else:
            d = np.sqrt(np.maximum(self.scores, 0.0))
        return np.where(self.ids >= 0, d, np.inf).astype(np.float32)

    @functools.cached_property
    def similarities(self) -> np.ndarray:
        s = self.scores if self.metric == "cosine" else 1.0 / (1.0 + self.distances)
        return np.where(self.ids >= 0, s, -np.inf).astype(np.float32)

    def paths(self) -> list[list[str]]:
        """The indexed paths of every row's neighbours."""
        rows = self.ids.tolist()
        meta = self._rows({i for row in rows for i in row if i >= 0})
        return [[meta[i][0] for i in row if i in meta] for row in rows]

    def results(self, names: Sequence[str] | None = None) -> list[QueryResult]:
        """One :class:`QueryResult` per query row, with :class:`Hit` objects."""
        names = names if names is not None else [f"vector {i}" for i in range(len(self))]
        rows = self.ids.tolist()
        meta = self._rows({i for row in rows for i in row if i >= 0})
        out = []
        for name, irow, drow, srow in zip(
            names,
            rows,
            self.distances.tolist(),
            self.similarities.tolist(),
            strict=True,
        ):
            hits: list[Hit] = []
            for i, d, sim in zip(irow, drow, srow, strict=True):
                if i >= 0 and i in meta:
                    path, label, sha = meta[i]
                    hits.append(Hit(len(hits) + 1, i, path, label, sha, d, sim))
            out.append(QueryResult(name, hits))
        return out


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, already indexed as)
    updated: list[str] = field(default_factory=list)  # same path, new content: old row replaced
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "duplicates": [{"path": p, "indexed_as": q} for p, q in self.duplicates],
            "unreadable": [{"path": p, "error": e} for p, e in self.unreadable],
        }


@dataclass
class RemoveReport:
    removed: list[str] = field(default_factory=list)  # paths of the removed items
    not_found: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise VitrinaError("faiss is not installed: pip install faiss-cpu") from exc
    return faiss


def _now() -> float:
    return round(time.time(), 3)


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_faiss(index: Any, dest: Path) -> str:
    """Write a faiss index to ``dest`` via a temp file in the same folder (fsync + rename);
    returns the sha256 of its bytes."""
    from vitrina.io.files import _create_temp, _fsync_file, _unlink_quietly

    fd, tmp = _create_temp(dest.parent, dest)
    os.close(fd)
    try:
        digest = write_faiss(index, tmp)
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(dest.parent)
    return digest


def _ids_of(index: Any) -> np.ndarray:
    """The external ids held by an IndexIDMap2, sorted."""
    return np.sort(_faiss().vector_to_array(index.id_map).astype(np.int64))


def _inner(index: Any) -> Any:
    return _faiss().downcast_index(index.index)


def _flat_of(inner: Any) -> Any:
    """The IndexFlat holding ``inner``'s vectors (itself, or an HNSW's storage); None (IVF)."""
    faiss = _faiss()
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return inner if isinstance(inner, faiss.IndexFlat) else None


class _Owned:
    """An array interface that keeps the faiss structure owning the memory alive."""

    def __init__(self, view: np.ndarray, owner: Any) -> None:
        self.__array_interface__ = view.__array_interface__
        self.owner = owner


def _positions_vectors(structure: Any) -> np.ndarray:
    """Every vector in ``structure``, row i = inner position i (= ``id_map[i]``): a view of
    faiss' own memory (no copy) for flat storage, read out of the inverted lists for IVF.
    The view holds ``structure`` alive, but is only valid until it is next changed (an add
    may move faiss' buffer): internal, short-lived use only."""
    faiss = _faiss()
    inner = _inner(structure)
    n, d = inner.ntotal, inner.d
    flat = _flat_of(inner)
    if flat is not None:
        if n == 0:
            return np.zeros((0, d), dtype=np.float32)
        view = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
        return np.asarray(_Owned(view, structure))
    out = np.empty((n, d), dtype=np.float32)
    lists = inner.invlists
    for lst in range(inner.nlist):
        size = lists.list_size(lst)
        if not size:
            continue
        pos = faiss.rev_swig_ptr(lists.get_ids(lst), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(lst), size * d * 4)
        out[pos] = np.frombuffer(codes.tobytes(), dtype=np.float32).reshape(size, d)
    return out


def _live_vectors(structure: Any, alive: _Alive) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of ``structure`` without its tombstones (a view when there are none)."""
    ids = _faiss().vector_to_array(structure.id_map).astype(np.int64)
    vecs = _positions_vectors(structure)
    if len(alive.dead):
        keep = np.ones(len(ids), dtype=bool)
        keep[alive.dead] = False
        return ids[keep], vecs[keep]
    return ids, vecs


class _NewRows(NamedTuple):
    """Rows ``rows`` of the caller's array ``x``, to be added: handed to faiss a chunk at a
    time, L2-normalised on the way for cosine, so no normalised copy of the whole batch is
    ever held (the caller's array is not touched)."""

    x: np.ndarray
    rows: np.ndarray
    normalize: bool

    @classmethod
    def none(cls, dim: int) -> _NewRows:
        return cls(np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.int64), False)

    def chunks(self) -> Iterable[np.ndarray]:
        for s in range(0, len(self.rows), _ADD_CHUNK):
            chunk = self.x[self.rows[s : s + _ADD_CHUNK]]
            yield _l2_normalize(chunk) if self.normalize else np.ascontiguousarray(chunk)

    def whole(self) -> np.ndarray | None:
        """The caller's array itself when it is exactly what is to be added (every row, and
        already of unit length where cosine asks for it): faiss then takes it in one call,
        with no copy (HNSW orders a single add by level, which builds a better graph than
        chunk after chunk: measured recall@10 0.975 vs 0.945 at 50k x 1,280-d, same efSearch)."""
        if len(self.rows) != len(self.x) or not np.array_equal(self.rows, np.arange(len(self.x))):
            return None
        if self.normalize:
            for s in range(0, len(self.x), _ADD_CHUNK):
                norms = np.linalg.norm(self.x[s : s + _ADD_CHUNK], axis=1)
                if not np.allclose(norms, 1.0, rtol=0, atol=1e-6):
                    return None
        return self.x

    def materialize(self) -> np.ndarray:
        parts = list(self.chunks())
        return np.concatenate(parts) if parts else self.x[:0]


def _add(structure: Any, ids: np.ndarray, vecs: np.ndarray | _NewRows) -> None:
    """Add ``vecs`` under ``ids``: in one call where no copy is needed (a view, or new rows
    that are already what is stored), else a normalised chunk at a time."""
    if not len(ids):
        return
    whole = vecs.whole() if isinstance(vecs, _NewRows) else vecs
    if whole is not None and whole.flags.c_contiguous:
        structure.add_with_ids(whole, np.ascontiguousarray(ids))
        return
    chunks = (
        vecs.chunks()
        if isinstance(vecs, _NewRows)
        else (vecs[s : s + _ADD_CHUNK] for s in range(0, len(ids), _ADD_CHUNK))
    )
    for s, chunk in zip(range(0, len(ids), _ADD_CHUNK), chunks, strict=True):
        structure.add_with_ids(
            np.ascontiguousarray(chunk), np.ascontiguousarray(ids[s : s + _ADD_CHUNK])
        )


class _Alive(NamedTuple):
    """Which inner positions of a structure are live (HNSW tombstones are not)."""

    dead: np.ndarray  # sorted inner positions of tombstones (empty: none)
    selector: Any  # faiss IDSelector over inner positions, None without tombstones

    @classmethod
    def of(cls, id_map: np.ndarray, removed: np.ndarray) -> _Alive:
        if not len(removed):
            return cls(np.zeros(0, dtype=np.int64), None)
        faiss = _faiss()
        dead = np.flatnonzero(np.isin(id_map, removed)).astype(np.int64)
        bitmap = np.ones(len(id_map), dtype=bool)
        bitmap[dead] = False
        packed = np.packbits(bitmap, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(id_map), faiss.swig_ptr(packed))
        sel.referenced_objects = [packed]  # the selector reads this buffer: keep it alive
        return cls(dead, sel)


def _label_for(path: Path, root: Path | None) -> str:
    """Parent folder relative to the indexed root ('' for files directly in it)."""
    if root is not None:
        with suppress(ValueError):
            rel = path.parent.relative_to(root)
            return "" if str(rel) == "." else rel.as_posix()
    return path.parent.name


def collect_images(sources: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path | None]]:
    """(image, root) for every image file named or found (recursively) in named folders."""
    from vitrina.data.folder import iter_image_files
    from vitrina.io.images import is_image_path

    found: list[tuple[Path, Path | None]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            root = p.resolve()
            images, _hidden, _other = iter_image_files(root, recursive=True)
            found.extend((img, root) for img in images)
        elif p.exists() or is_image_path(p):
            found.append((p.resolve() if p.exists() else p.absolute(), None))
        else:
            raise VitrinaError(f"{p}: not found")
    return found


_META_CACHE_MAX = 5_000_000  # rows of metadata kept in memory for searching (~150 B each)


def _are_vectors(queries: Any) -> bool:
    """Whether :meth:`Index.search` reads ``queries`` as vectors: a float numpy array of one
    or two dimensions (photos are uint8 arrays, 3-D arrays, tensors, PIL images, paths)."""
    return (
        isinstance(queries, np.ndarray)
        and queries.ndim in (1, 2)
        and np.issubdtype(queries.dtype, np.floating)
    )


def _as_matrix(vectors: Any, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise VitrinaError(f"{what}: expected an (N, dim) array of vectors, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise VitrinaError(f"{what}: vectors have {x.shape[1]} dimensions, the index has {dim}")
    step = max(1, (1 << 22) // max(x.shape[1], 1))  # a bounded mask, not one the size of x
    if not all(np.isfinite(x[s : s + step]).all() for s in range(0, len(x), step)):
        raise VitrinaError(f"{what}: vectors contain NaN or infinite values")
    return np.ascontiguousarray(x)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """A unit-length float32 copy of each row (numpy: faiss' ``normalize_L2`` is an OpenMP
    loop whose thread wake-up costs more than a single query's search on a busy machine)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _drop_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row without the query's own id, cut to ``k`` (padded with -1)."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for r, (row, me) in enumerate(zip(found, own, strict=True)):
        rest = [int(i) for i in row if i != me][:k]
        out[r, : len(rest)] = rest
    return out


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    hits = 0
    total = 0
    for a, e in zip(approx_ids, exact_ids, strict=True):
        truth = {int(i) for i in e if i >= 0}
        if not truth:
            continue
        hits += len(truth & {int(i) for i in a if i >= 0})
        total += len(truth)
    return hits / total if total else 1.0


# --------------------------------------------------------------------------- the index


class Index:
    """A folder of image vectors you can search by image. See the module docstring.

    Build with :meth:`build` (images) or :meth:`create` + :meth:`add_vectors` (your own
    vectors); open with :meth:`open`.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, info: dict[str, Any]) -> None:
        self.path = path
        self._conn = conn
        self._info = info
        self._faiss_index: Any = None
        self._embedder: Any = None
        self.backend = "auto"
        self.device = "auto"
        self.batch_size = 32
        self.recovered: str | None = None  # what open() repaired, if anything
        self.build_report: AddReport | None = None
        self._identity: tuple[int, int] | None = None  # meta.sqlite's (device, inode)
        # The loaded faiss structure passed the checks or was built here from checked
        # vectors: it may restore a damaged stored vector.
        self._structure_verified = False
        self._alive = _Alive(np.zeros(0, dtype=np.int64), None)  # HNSW tombstones
        self._view: tuple[Any, np.ndarray] | None = None  # see _search_view

    @property
    def _vectors_in_db(self) -> bool:
        """Format 1: every vector is also a BLOB in meta.sqlite (the source for rebuilds)."""
        return int(self._info.get("format_version", FORMAT_VERSION)) == 1

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

    @property
    def metric(self) -> str:
        return str(self._info["metric"])

    @property
    def kind(self) -> str:
        """The structure in use now: exact, hnsw or ivf."""
        return str(self._info["resolved_kind"])

    @property
    def fingerprint(self) -> str | None:
        return self._info.get("fingerprint")

    @property
    def model_label(self) -> str | None:
        return self._info.get("model_label")

    @property
    def spec(self) -> Any:
        s = self._info.get("spec")
        if not s:
            return None
        from vitrina.embed import EmbeddingSpec

        return EmbeddingSpec.from_dict(s)

    def __len__(self) -> int:
        return int(self._info["count"])

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, {len(self)} items, {self.kind}, {self.metric})"

    # ------------------------------------------------------------------ create / build / open

    @classmethod
    def create(
        cls,
        out: str | os.PathLike[str],
        *,
        dim: int,
        metric: str = "cosine",
        kind: str = "auto",
        spec: Any = None,
        fingerprint: str | None = None,
        model_label: str | None = None,
        root: str | None = None,
        _building: bool = False,
        _format: int = FORMAT_VERSION,
    ) -> Index:
        """An empty index in a new (or empty) folder ``out``; nothing existing is touched.
        (``_format=1`` writes the layout of vitrina before issue 17, for tests of old folders.)"""
        if metric not in METRICS:
            raise VitrinaError(f"unknown metric {metric!r}; choose {' or '.join(METRICS)}")
        if kind not in KINDS:
            raise VitrinaError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if int(dim) < 1:
            raise VitrinaError(f"dim must be at least 1, got {dim}")
        p = Path(out)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise IndexFolderError(
                f"{p}: already exists and is not an empty folder; choose another --out "
                "(an index is never written over existing files)"
            )
        p.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {
            "format_version": int(_format),
            "state": "building" if _building else "ready",
            "spec": spec.to_dict() if spec is not None else None,
            "fingerprint": fingerprint,
            "model_label": model_label,
            "dim": int(dim),
            "metric": metric,
            "kind": kind,
            "resolved_kind": _resolve_kind(kind, 0),
            "params": {},
            "count": 0,
            "generation": 0,
            "recall": None,
            "root": root,
            "created": _now(),
            "updated": _now(),
            "faiss_sha256": None,
        }
        conn = _connect(p / DB_NAME)
        idx = cls(p, conn, info)
        idx._faiss_index = idx._empty_structure(info["resolved_kind"])
        idx._structure_verified = True
        info["faiss_sha256"] = _write_faiss(idx._faiss_index, p / FAISS_NAME)
        with conn:
            conn.executescript(_SCHEMA_V1 if int(_format) == 1 else _SCHEMA)
            conn.executemany(
                "INSERT INTO info(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in info.items()],
            )
        idx._identity = _file_identity(p / DB_NAME)
        idx._write_summary()
        return idx

    @classmethod
    def build(
        cls,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        spec: Any = None,
        model: str | None = None,
        layers: Sequence[str] = (),
        metric: str = "cosine",
        kind: str = "auto",
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        embedder: Any = None,
        on_progress: ProgressFn | None = None,
    ) -> Index:
        """Embed every image under ``source`` (a folder, recursively, or a list of files and
        folders) and write a new index to ``out``. ``build_report`` says what was skipped."""
        sources = [source] if isinstance(source, str | os.PathLike) else list(source)
        if not sources:
            raise VitrinaError("nothing to index: no folder or files given")
        for s in sources:
            if not Path(s).exists():
                raise VitrinaError(f"{s}: not found")
        found = collect_images(sources)
        if not found:
            where = ", ".join(str(s) for s in sources)
            raise VitrinaError(
                f"{where}: no images found (looked for {IMAGE_EXTENSIONS_TEXT} files, recursively)"
            )
        if metric not in METRICS:
            raise VitrinaError(f"unknown metric {metric!r}; choose {' or '.join(METRICS)}")
        if kind not in KINDS:
            raise VitrinaError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if embedder is None:
            embedder = _make_embedder(spec, model, layers, backend, device, batch_size)
        out_p = Path(out)
        created_dir = not out_p.exists()
        root = str(Path(sources[0]).resolve()) if len(sources) == 1 else None
        idx = cls.create(
            out_p,
            dim=embedder.dim,
            metric=metric,
            kind=kind,
            spec=embedder.spec,
            fingerprint=embedder.fingerprint,
            model_label=embedder.model_label,
            root=root,
            _building=True,
        )
        idx._embedder = embedder
        idx.backend, idx.device, idx.batch_size = backend, device, batch_size
        try:
            report = idx._add_found(found, on_progress=on_progress)
            if not report.added and not len(idx):
                first = report.unreadable[0] if report.unreadable else ("", "")
                raise VitrinaError(
                    f"{', '.join(str(s) for s in sources)}: none of the {len(found)} images "
                    f"could be read (first: {first[0]}: {first[1]})"
                )
            with idx._conn:
                idx._set_info({"state": "ready"})
            idx._write_summary()
        except BaseException:
            idx.close()
            if created_dir:
                import shutil

                shutil.rmtree(out_p, ignore_errors=True)
            else:  # an empty folder the user gave: empty it again, only of our own files
                for name in (DB_NAME, FAISS_NAME, PENDING_NAME, JSON_NAME, DB_NAME + "-journal"):
                    with suppress(FileNotFoundError):
                        (out_p / name).unlink()
            raise
        idx.build_report = report
        return idx

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
    ) -> Index:
        """Open an index folder, checking it and repairing an interrupted update."""
        p = Path(path)
        if not p.exists():
            raise IndexFolderError(f"{p}: index folder not found")
        if not p.is_dir():
            raise IndexFolderError(
                f"{p}: not an index folder (it is a file); build one with "
                f"`vitrina index build DIR --model M --out {p}`"
            )
        db = p / DB_NAME
        if not db.is_file():
            if (p / FAISS_NAME).exists() or (p / JSON_NAME).exists():
                raise IndexFolderError(
                    f"index half-written: {p} has {FAISS_NAME} but no {DB_NAME}; delete the "
                    "folder and run `vitrina index build` again"
                )
            raise IndexFolderError(
                f"{p}: not a vitrina index (no {DB_NAME}); build one with "
                f"`vitrina index build DIR --model M --out {p}`"
            )
        try:
            conn = _connect(db)
            identity = _file_identity(db)
            rows = conn.execute("SELECT key, value FROM info").fetchall()
            conn.execute("SELECT id, path, sha256, label, vector FROM items LIMIT 1").fetchall()
            info = {k: json.loads(v) for k, v in rows}
        except Exception as exc:
            if not is_database_error(exc):
                raise
            with suppress(Exception):
                conn.close()
            ours = (p / FAISS_NAME).exists() or (p / JSON_NAME).exists()
            foreign = "no such table" in str(exc) or "not a database" in str(exc)
            if isinstance(exc, sqlite3.DatabaseError) and foreign and not ours:
                raise IndexFolderError(f"{p}: not a vitrina index ({DB_NAME}: {exc})") from None
            raise database_error(p, exc) from None
        version = info.get("format_version")
        if version not in READABLE_VERSIONS:
            conn.close()
            raise IndexFolderError(
                f"{p}: index format version {version}, this vitrina reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild it with `vitrina index build`"
            )
        if info.get("state") != "ready":
            conn.close()
            raise IndexFolderError(
                f"index half-written: {p}: its build was interrupted before it finished; "
                "delete the folder and run `vitrina index build` again"
            )
        idx = cls(p, conn, info)
        idx._identity = identity
        idx.backend, idx.device, idx.batch_size = backend, device, batch_size
        try:
            idx._load_structure()
        except BaseException as exc:
            idx.close()
            if is_database_error(exc) and not isinstance(exc, VitrinaError):
                raise database_error(p, exc) from None
            raise
        return idx

    def close(self) -> None:
        with suppress(Exception):
            self._conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ loading / recovery

    def _db_ids(self) -> np.ndarray:
        rows = self._conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def _removed_ids(self) -> np.ndarray:
        """Ids of HNSW tombstones: in vectors.faiss, no longer in ``items`` (format 2)."""
        if self._vectors_in_db:
            return np.zeros(0, dtype=np.int64)
        rows = self._conn.execute("SELECT id FROM removed ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def _load_structure(self, *, repair: bool = True) -> None:
        """Load vectors.faiss, checked (module docstring); if it is not the state SQLite
        records, take the pending file, else rebuild from the stored vectors (format 1) or
        refuse in one line (format 2). ``repair=False`` (a reader beside a live writer): fix
        it in memory only, never touch the files."""
        db_ids = self._db_ids()
        if len(db_ids) != len(self):
            raise IndexFolderError(
                f"index half-written: {self.path}: {DB_NAME} lists {len(db_ids)} items but "
                f"records {len(self)}; rebuild it with `vitrina index build`"
            )
        removed = self._removed_ids()
        expected = np.union1d(db_ids, removed) if len(removed) else db_ids
        recorded = self._info.get("faiss_sha256")
        current, digest = read_faiss(self.path / FAISS_NAME)
        why = self._distrust(current, digest, recorded, expected, FAISS_NAME)
        if why is None:
            self._faiss_index = current
            self._structure_verified = True
            self._apply_search_params()
            if repair:
                with suppress(FileNotFoundError):
                    (self.path / PENDING_NAME).unlink()  # an update that never committed
                if recorded is None and digest:  # made before checksums: record it now
                    self._stored_vectors()  # and restore SQLite's damaged copies from it
                    with suppress(sqlite3.Error):
                        self._record_digest(digest)
            return
        pending, pending_digest = read_faiss(self.path / PENDING_NAME)
        if self._distrust(pending, pending_digest, recorded, expected, PENDING_NAME) is None:
            self._faiss_index = pending
            self._structure_verified = True
            how = f"completed an interrupted update from {PENDING_NAME}"
            if repair:
                try:
                    os.replace(self.path / PENDING_NAME, self.path / FAISS_NAME)
                    _fsync_dir(self.path)
                except FileNotFoundError:
                    pass  # the writer finished it at the same moment
                except OSError as exc:
                    how += f" (could not save it: {exc.strerror or exc})"
        elif not self._vectors_in_db:
            from vitrina.search.store import rebuild_hint

            raise IndexDamagedError(
                f"{self.path / FAISS_NAME}: {why}, and it holds the only copy of this index's "
                f"{len(expected)} vectors ({DB_NAME} holds their metadata); "
                f"{rebuild_hint(self.path)}"
            )
        else:
            self._structure_verified = False  # its vectors cannot vouch for SQLite's
            # A stored vector that is itself damaged may still be taken from the file it
            # replaces, where that one's copy passes the checks (row by row).
            usable = current if why == "did not match the stored vectors" else None
            self._faiss_index = self._build_structure(
                self.kind, self._stored_vectors(fallback=usable)
            )
            how = f"{FAISS_NAME} {why}; rebuilt it from the {len(db_ids)} stored vectors"
            if repair:
                how += self._save_repair()
            else:
                how += " (in memory)"
        self._apply_search_params()
        if repair:
            with suppress(OSError):
                self._write_summary()
        self.recovered = f"{self.path}: {how}"

    def _distrust(
        self, structure: Any, digest: str | None, recorded: str | None, db_ids: Any, name: str
    ) -> str | None:
        """Why ``structure`` (read from ``name``) is not the committed state, or None."""
        if structure is None:
            return "was missing" if not (self.path / name).exists() else "could not be read"
        if not self._matches(structure, db_ids):
            return "was out of date"
        if recorded is not None and digest != recorded:
            return "failed its checksum (damaged)"
        stored = storage_vectors(structure)
        if stored is not None:
            bad = damaged_rows(stored, self.metric)
            if len(bad):
                what = "not of unit length" if self.metric == "cosine" else "not finite"
                return f"held {len(bad)} damaged vector(s) ({what})"
            if (
                recorded is None
                and self._vectors_in_db
                and not self._agrees_with_stored(structure, stored)
            ):
                return "did not match the stored vectors"
        return None

    def _agrees_with_stored(self, structure: Any, stored: np.ndarray) -> bool:
        """A file without a recorded checksum (older vitrina) against SQLite's vectors: equal,
        or different only where SQLite's copy is itself damaged (restored after loading)."""
        ids = _faiss().vector_to_array(structure.id_map).astype(np.int64)
        want_ids, want = self._stored_vectors(check=False)
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], want_ids):
            return False
        with np.errstate(invalid="ignore"):
            differ = np.flatnonzero(~np.isclose(stored[order], want, atol=1e-6).all(axis=1))
        return not len(differ) or bool(np.isin(differ, damaged_rows(want, self.metric)).all())

    def _save_repair(self) -> str:
        """Write the rebuilt structure and record its checksum, under SQLite's write lock so
        that no writer commits in between; the text added to the repair message."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return f" (in memory only: {DB_NAME} is not writable: {exc})"
        try:
            if self._generation_on_disk() != self._info["generation"]:
                conn.execute("ROLLBACK")
                return " (in memory only: another process changed the index meanwhile)"
            digest = _write_faiss(self._faiss_index, self.path / FAISS_NAME)
            self._set_info({"faiss_sha256": digest})
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return f" (in memory only: could not save it: {getattr(exc, 'strerror', None) or exc})"
        with suppress(FileNotFoundError):
            (self.path / PENDING_NAME).unlink()
        return ""

    def _record_digest(self, digest: str) -> None:
        """Record the checksum of a verified file that predates checksums (same generation)."""
        self._conn.execute(
            "INSERT OR REPLACE INTO info(key, value) SELECT 'faiss_sha256', ? WHERE "
            "(SELECT value FROM info WHERE key = 'generation') = ?",
            (json.dumps(digest), json.dumps(self._info["generation"])),
        )
        self._info["faiss_sha256"] = digest

    def _generation_on_disk(self) -> int:
        row = self._conn.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0]))

    def _matches(self, structure: Any, db_ids: np.ndarray) -> bool:
        faiss = _faiss()
        if not isinstance(structure, faiss.IndexIDMap2) or structure.d != self.dim:
            return False
        if _structure_kind(_inner(structure)) != self.kind:
            return False
        ids = _ids_of(structure)
        return len(ids) == len(db_ids) and bool(np.array_equal(ids, db_ids))

    def _stored_vectors(
        self, ids: np.ndarray | None = None, *, check: bool = True, fallback: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live items. Format 2: from the loaded faiss structure, in its
        order (a view of faiss' memory, no copy, when no tombstones are in the way; checked
        when it was loaded). Format 1: from SQLite, in id order (the source of truth);
        ``check``: a vector that is damaged (wrong length, not finite, not unit length in a
        cosine index) is restored from the loaded faiss structure when that was verified (or
        from ``fallback``'s copy when that one passes the checks), else refused."""
        if not self._vectors_in_db:
            return _live_vectors(self._faiss_index, self._alive)
        rows = self._conn.execute("SELECT id, vector FROM items ORDER BY id").fetchall()
        out_ids = np.empty(len(rows), dtype=np.int64)
        vecs = np.zeros((len(rows), self.dim), dtype=np.float32)
        wrong_size = []
        for i, (rid, blob) in enumerate(rows):
            out_ids[i] = rid
            v = np.frombuffer(blob, dtype=np.float32) if isinstance(blob, bytes) else None
            if v is None or v.shape[0] != self.dim:
                wrong_size.append(i)
                vecs[i] = np.nan
            else:
                vecs[i] = v
        if check:
            bad = damaged_rows(vecs, self.metric) if len(vecs) else np.zeros(0, np.int64)
            if len(bad):
                self._restore_stored(out_ids, vecs, bad, fallback)
        return out_ids, vecs

    def _restore_stored(
        self, ids: np.ndarray, vecs: np.ndarray, bad: np.ndarray, fallback: Any = None
    ) -> None:
        """Damaged rows of ``vecs`` from a faiss structure, written back to SQLite."""
        structure = self._faiss_index if self._structure_verified else fallback
        stored = storage_vectors(structure) if structure is not None else None
        pos = {}
        if stored is not None:
            pos = {int(i): p for p, i in enumerate(_faiss().vector_to_array(structure.id_map))}
            copies = stored[[pos.get(int(ids[i]), 0) for i in bad]] if len(stored) else stored
            fine = np.ones(len(bad), bool)
            fine[damaged_rows(copies, self.metric)] = False
            fine &= np.array([int(ids[i]) in pos for i in bad], bool)
        if stored is None or not fine.all():
            from vitrina.search.store import rebuild_hint

            lost = bad if stored is None else bad[~fine]
            shown = ", ".join(str(int(ids[i])) for i in lost[:5]) + (
                " ..." if len(lost) > 5 else ""
            )
            raise IndexDamagedError(
                f"{self.path / DB_NAME}: {len(lost)} stored vector(s) are damaged (items "
                f"{shown}) and {FAISS_NAME} cannot restore them; {rebuild_hint(self.path)}"
            )
        for i in bad:
            vecs[i] = stored[pos[int(ids[i])]]
        self._conn.executemany(
            "UPDATE items SET vector = ? WHERE id = ?",
            [(vecs[i].tobytes(), int(ids[i])) for i in bad],
        )
        note = f"{self.path}: restored {len(bad)} damaged stored vector(s) from {FAISS_NAME}"
        self.recovered = f"{self.recovered}; {note}" if self.recovered else note

    # ------------------------------------------------------------------ faiss structures

    def _metric_const(self) -> int:
        faiss = _faiss()
        return faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2

    def _empty_structure(self, kind: str, train: np.ndarray | None = None) -> Any:
        faiss = _faiss()
        d = self.dim
        if kind == "exact":
            inner = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, HNSW_M, self._metric_const())
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        elif kind == "ivf":
            n = 0 if train is None else len(train)
            nlist = ivf_nlist(n)
            quantizer = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
            inner = faiss.IndexIVFFlat(quantizer, d, nlist, self._metric_const())
            if train is not None and len(train):
                rng = np.random.default_rng(0)
                take = min(len(train), nlist * 256)
                sample = train[np.sort(rng.choice(len(train), take, replace=False))]
                inner.train(sample)
        else:  # pragma: no cover - guarded by KINDS
            raise ValueError(kind)
        return faiss.IndexIDMap2(inner)  # the python wrapper keeps ``inner`` alive

    def _build_structure(self, kind: str, *parts: tuple[np.ndarray, np.ndarray | _NewRows]) -> Any:
        """A new structure holding every ``(ids, vectors)`` part, added a chunk at a time (the
        parts may be views of another structure's memory or rows still to be normalised: no
        full copy is made, IVF's training sample excepted)."""
        train = None
        if kind == "ivf":
            train = np.concatenate(
                [v.materialize() if isinstance(v, _NewRows) else v for _, v in parts]
            )
        structure = self._empty_structure(kind, train=train)
        for ids, vecs in parts:
            _add(structure, ids, vecs)
        return structure

    def _apply_search_params(self, k: int = RECALL_K) -> None:
        inner = _inner(self._faiss_index)
        params = self._info.get("params") or {}
        if self.kind == "hnsw":
            inner.hnsw.efSearch = max(int(params.get("efSearch", 64)), k)
        elif self.kind == "ivf":
            inner.nprobe = int(params.get("nprobe", 8))
        id_map = _faiss().vector_to_array(self._faiss_index.id_map).astype(np.int64)
        self._alive = _Alive.of(id_map, self._removed_ids())
        self._view = None  # the search view is rebuilt on the next search

    def _tune_and_measure(
        self, structure: Any, alive: _Alive | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Tune efSearch / nprobe to reach TARGET_RECALL on a sample; return (params, recall).

        The queries are a seeded sample of live stored vectors; the truth is exact search over
        all live vectors, read where faiss keeps them (no second copy of the data)."""
        faiss = _faiss()
        inner = _inner(structure)
        kind = _structure_kind(inner)
        alive = alive or _Alive(np.zeros(0, dtype=np.int64), None)
        n = structure.ntotal - len(alive.dead)
        if kind == "exact":
            return {}, None
        params: dict[str, Any] = {}
        if kind == "hnsw":
            params.update(M=HNSW_M, efConstruction=int(inner.hnsw.efConstruction))
        else:
            params.update(nlist=int(inner.nlist))
        if n <= 0:
            params["efSearch" if kind == "hnsw" else "nprobe"] = 64 if kind == "hnsw" else 8
            return params, None
        id_map = faiss.vector_to_array(structure.id_map).astype(np.int64)
        live = np.setdiff1d(np.arange(structure.ntotal), alive.dead, assume_unique=True)
        rng = np.random.default_rng(12345)
        take = np.sort(live[rng.choice(n, min(n, RECALL_SAMPLE), replace=False)])
        vectors = _positions_vectors(structure)
        queries = np.ascontiguousarray(vectors[take])
        k = min(RECALL_K, n - 1) if n > 1 else 1
        # Leave-one-out: each sampled vector's own entry is dropped from both lists, so the
        # trivial self-match does not inflate the recall of the approximate structure.
        flat = _flat_of(inner)
        if flat is not None:
            exact = faiss.SearchParameters()
            exact.sel = alive.selector
            _, pos = flat.search(queries, k + 1, params=exact if alive.selector else None)
        else:
            _, pos = faiss.knn(queries, vectors, k + 1, metric=self._metric_const())
        del vectors
        own = id_map[take]
        truth = _drop_self(np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1), own, k)
        if kind == "hnsw":
            knob, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
        else:
            knob = "nprobe"
            values = sorted({v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if v < inner.nlist})
            values.append(int(inner.nlist))
        recall = 0.0
        chosen = values[-1]
        for v in values:
            if kind == "hnsw":
                search = faiss.SearchParametersHNSW()
                search.efSearch = max(v, k + 1)
                search.sel = alive.selector
                _, got = inner.search(queries, k + 1, params=search)
            else:
                inner.nprobe = v
                _, got = inner.search(queries, k + 1)
            got = np.where(got >= 0, id_map[np.clip(got, 0, None)], -1)
            recall = recall_at_k(_drop_self(got, own, k), truth)
            chosen = v
            if recall >= TARGET_RECALL:
                break
        params[knob] = chosen
        measured = {
            "recall_at_10": round(float(recall), 4),
            "k": k,
            "queries": len(queries),
            "method": "leave-one-out: stored vectors as queries, their own entry excluded",
            "target": TARGET_RECALL,
            "at_count": int(n),
            "measured": _now(),
        }
        return params, measured

    # ------------------------------------------------------------------ adding

    @property
    def embedder(self) -> Any:
        """The index's own embedder (built from the stored spec on first use)."""
        if self._embedder is None:
            spec = self.spec
            if spec is None:
                raise VitrinaError(
                    f"{self.path}: this index was built from raw vectors and has no model; "
                    "pass vectors (or an embedder) instead of image paths"
                )
            from vitrina.embed import Embedder

            emb = Embedder(
                spec, backend=self.backend, device=self.device, batch_size=self.batch_size
            )
            if emb.fingerprint != self.fingerprint:
                raise IndexFolderError(
                    f"{self.path}: built with {self.model_label} (fingerprint {self.fingerprint}) "
                    f"but {spec.model} now embeds as {emb.model_label} (fingerprint "
                    f"{emb.fingerprint}): its weights changed; rebuild the index"
                )
            self._embedder = emb
        return self._embedder

    def _check_embedder(self, embedder: Any) -> Any:
        if embedder is None:
            return self.embedder
        if self.fingerprint is not None and embedder.fingerprint != self.fingerprint:
            raise IndexFolderError(
                f"{self.path}: built with {self.model_label} (fingerprint {self.fingerprint}); "
                f"these images would be embedded with {embedder.model_label} (fingerprint "
                f"{embedder.fingerprint}): vectors of different models cannot be compared. "
                "Use the index's model, or build a new index with the other one"
            )
        if embedder.dim != self.dim:
            raise IndexFolderError(
                f"{self.path}: index vectors are {self.dim}-d, the embedder gives {embedder.dim}-d"
            )
        return embedder

    @_db_guard
    def add(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        embedder: Any = None,
        on_progress: ProgressFn | None = None,
    ) -> AddReport:
        """Embed and add image files (folders: every image inside, recursively).

        A file whose content (sha256) is already indexed is skipped; a known path with new
        content replaces its old entry; unreadable files are reported, the rest still added."""
        found = collect_images(paths)
        if embedder is not None:
            self._embedder = self._check_embedder(embedder)
        return self._add_found(found, on_progress=on_progress)

    def _add_found(
        self, found: list[tuple[Path, Path | None]], *, on_progress: ProgressFn | None
    ) -> AddReport:
        from vitrina.io.images import file_digest

        report = AddReport()
        todo: list[tuple[Path, Path | None, str, int, float]] = []
        seen: dict[str, str] = {}
        for img, root in found:
            try:
                st = img.stat()
                digest = file_digest(img)
            except OSError as exc:
                report.unreadable.append((str(img), _os_reason(exc)))
                continue
            if digest in seen:
                report.duplicates.append((str(img), seen[digest]))
                continue
            seen[digest] = str(img)
            todo.append((img, root, digest, st.st_size, st.st_mtime))
        known = self._known_hashes([t[2] for t in todo])
        fresh = []
        for item in todo:
            if item[2] in known:
                report.duplicates.append((str(item[0]), known[item[2]]))
            else:
                fresh.append(item)
        vectors = np.zeros((0, self.dim), dtype=np.float32)
        metas: list[dict[str, Any]] = []
        if fresh:
            emb = self.embedder
            res = emb.embed_paths([t[0] for t in fresh], on_progress=on_progress)
            by_path = {str(t[0]): t for t in fresh}
            for p, msg in res.errors:
                report.unreadable.append((str(p), _strip_path(str(p), msg)))
            for p in res.paths:
                img, root, digest, size, mtime = by_path[str(p)]
                metas.append(
                    {
                        "path": str(img),
                        "sha256": digest,
                        "size": size,
                        "mtime": mtime,
                        "label": _label_for(img, root),
                    }
                )
            vectors = res.vectors
        elif on_progress is not None:
            on_progress(len(found), len(found))
        if len(metas):
            sub = self.add_vectors(vectors, metas)
            report.added.extend(sub.added)
            report.updated.extend(sub.updated)
            report.duplicates.extend(sub.duplicates)
        return report

    def _known_hashes(self, digests: Sequence[str]) -> dict[str, str]:
        known: dict[str, str] = {}
        q = "SELECT sha256, path FROM items WHERE sha256 IN (SELECT value FROM json_each(?))"
        for i in range(0, len(digests), 500):
            chunk = list(digests[i : i + 500])
            known.update(dict(self._conn.execute(q, (json.dumps(chunk),)).fetchall()))
        return known

    @_db_guard
    def add_vectors(
        self, vectors: Any, metas: Sequence[dict[str, Any] | str], *, fingerprint: str | None = None
    ) -> AddReport:
        """Add your own vectors. ``metas[i]`` is a path or a dict with ``path`` and optionally
        ``sha256``, ``label``, ``size``, ``mtime``. Rows whose sha256 is already indexed are
        skipped; a dict path already indexed with another sha256 replaces that row."""
        if fingerprint is not None and self.fingerprint and fingerprint != self.fingerprint:
            raise IndexFolderError(
                f"{self.path}: built with {self.model_label} (fingerprint {self.fingerprint}); "
                f"these vectors have fingerprint {fingerprint}: they cannot be compared"
            )
        x = _as_matrix(vectors, self.dim, "add_vectors")
        if len(metas) != len(x):
            raise VitrinaError(f"add_vectors: {len(x)} vectors but {len(metas)} metadata entries")
        cosine = self.metric == "cosine"
        in_db = self._vectors_in_db
        rows = [_meta_row(m) for m in metas]
        report = AddReport()

        def blob(vec: np.ndarray) -> bytes | None:
            if not in_db:
                return None  # format 2: the vector lives in vectors.faiss only
            if cosine:  # the same arithmetic as the rows faiss gets (format 1 compares them)
                vec = _l2_normalize(vec[None])[0]
            return vec.tobytes()

        def change(conn: sqlite3.Connection) -> tuple[list[int], list[int], _NewRows]:
            new_ids: list[int] = []
            keep: list[int] = []
            dropped: list[int] = []
            seen: set[str] = set()
            fresh: set[int] = set()  # new_ids as a set: membership tests stay O(1)
            reported: set[str] = set()  # paths in report.added or report.updated
            now = _now()
            for pos, (vec, row) in enumerate(zip(x, rows, strict=True)):
                sha = row["sha256"]
                if sha is not None:
                    if sha in seen:
                        report.duplicates.append((row["path"], row["path"]))
                        continue
                    hit = conn.execute("SELECT path FROM items WHERE sha256 = ?", (sha,)).fetchone()
                    if hit is not None:
                        report.duplicates.append((row["path"], hit[0]))
                        continue
                    seen.add(sha)
                    old = conn.execute(
                        "SELECT id, sha256 FROM items WHERE path = ? AND sha256 IS NOT NULL",
                        (row["path"],),
                    ).fetchall()
                    if old:
                        conn.executemany("DELETE FROM items WHERE id = ?", [(r,) for r, _ in old])
                        for rid, old_sha in old:
                            if rid in fresh:  # the same path earlier in this call: it never
                                j = new_ids.index(rid)  # reaches faiss (no orphan vector), and
                                del new_ids[j], keep[j]  # its content may come again later
                                fresh.discard(rid)
                                seen.discard(old_sha)
                            else:
                                dropped.append(rid)
                                if row["path"] not in reported:
                                    report.updated.append(row["path"])
                                    reported.add(row["path"])
                cur = conn.execute(
                    "INSERT INTO items(path, sha256, size, mtime, label, added, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        row["path"],
                        sha,
                        row["size"],
                        row["mtime"],
                        row["label"],
                        now,
                        blob(vec),
                    ),
                )
                new_ids.append(int(cur.lastrowid))
                fresh.add(new_ids[-1])
                keep.append(pos)
                if row["path"] not in reported:  # (a list test here was O(N^2) for big adds)
                    report.added.append(row["path"])
                    reported.add(row["path"])
            return new_ids, dropped, _NewRows(x, np.asarray(keep, dtype=np.int64), cosine)

        self._update(change)
        return report

    # ------------------------------------------------------------------ removing

    @_db_guard
    def remove(self, items: Sequence[str | os.PathLike[str]]) -> RemoveReport:
        """Remove by path (a folder: everything indexed under it) or by sha256 (or a unique
        prefix of at least 8 hex digits)."""
        report = RemoveReport()

        def change(conn: sqlite3.Connection) -> tuple[list[int], list[int], _NewRows]:
            dropped: dict[int, str] = {}
            for item in items:
                rows = _match_rows(conn, str(item))
                if not rows:
                    report.not_found.append(str(item))
                    continue
                for rid, path in rows:
                    dropped.setdefault(rid, path)
            conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in dropped])
            report.removed.extend(dropped.values())
            return [], list(dropped), _NewRows.none(self.dim)

        if items:
            self._update(change)
        return report

    @_db_guard
    def compact(self) -> int:
        """Rebuild an HNSW structure without its tombstones now (a removal does it by itself
        beyond :data:`COMPACT_FRACTION`); returns how many tombstones were dropped."""
        n = len(self._alive.dead)
        if n:
            self._update(lambda conn: ([], [], _NewRows.none(self.dim)), compact=True)
        return n

    @_db_guard
    def upgrade(self) -> bool:
        """Drop a format 1 folder's second copy of the vectors (the BLOBs in meta.sqlite) and
        make it format 2, in one SQLite transaction (``vectors.faiss`` is not touched: it
        already holds every vector). Only from a faiss file that was verified on open and
        agrees with every stored vector; returns False when the folder is format 2 already.
        Older vitrina versions cannot open the folder afterwards."""
        if not self._vectors_in_db:
            return False
        if not self._structure_verified or self.recovered:
            raise IndexFolderError(
                f"{self.path}: {FAISS_NAME} was repaired or not verified on open; open the "
                "index again (a clean open) before upgrading it"
            )
        structure = self._faiss_index
        ids, stored = self._stored_vectors()  # checked (a damaged one restored from faiss)
        held = _faiss().vector_to_array(structure.id_map).astype(np.int64)
        order = np.argsort(held, kind="stable")
        faiss_copy = _positions_vectors(structure)[order]
        if not np.array_equal(held[order], ids) or not np.allclose(faiss_copy, stored, atol=1e-6):
            raise IndexDamagedError(
                f"{self.path}: {FAISS_NAME} and {DB_NAME} hold different vectors; not upgraded "
                f"(nothing changed); {_rebuild_hint(self.path)}"
            )
        del faiss_copy, stored
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._generation_on_disk() != self._info["generation"]:
                raise IndexFolderError(
                    f"{self.path}: changed by another process since it was opened; open it again"
                )
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            conn.execute(_ITEMS_TABLE.format(name="items_v2"))
            conn.execute(
                "INSERT INTO items_v2(id, path, sha256, size, mtime, label, added) "
                "SELECT id, path, sha256, size, mtime, label, added FROM items"
            )
            conn.execute("DROP TABLE items")
            conn.execute("ALTER TABLE items_v2 RENAME TO items")
            conn.execute("CREATE INDEX items_path ON items(path)")
            conn.execute(_REMOVED_TABLE)
            if seq is not None:  # row ids are never reused, also across the upgrade
                conn.execute("DELETE FROM sqlite_sequence WHERE name = 'items'")
                conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('items', ?)", seq)
            self._set_info(
                {
                    "format_version": FORMAT_VERSION,
                    "generation": int(self._info["generation"]) + 1,
                    "updated": _now(),
                }
            )
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._reload()
            raise
        with suppress(sqlite3.Error):
            conn.execute("VACUUM")  # give the BLOBs' pages back to the file system
        self._apply_search_params()
        with suppress(OSError):
            self._write_summary()
        return True

    # ------------------------------------------------------------------ the update protocol

    def _update(
        self,
        change: Callable[[sqlite3.Connection], tuple[list[int], list[int], _NewRows]],
        *,
        compact: bool = False,
    ) -> None:
        """Run ``change`` in one SQLite transaction and bring the faiss file along (see the
        module docstring for the commit order). On any failure the old state stays."""
        conn = self._conn
        pending = self.path / PENDING_NAME
        generation = int(self._info["generation"])
        conn.execute("BEGIN IMMEDIATE")
        wrote = False
        try:
            on_disk = json.loads(
                conn.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()[0]
            )
            if on_disk != generation:
                raise IndexFolderError(
                    f"{self.path}: changed by another process since it was opened; open it again"
                )
            new_ids, dropped, new = change(conn)
            if not new_ids and not dropped and not compact:
                conn.execute("ROLLBACK")
                return
            count = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            kind = _resolve_kind(self._info["kind"], count)
            structure = self._faiss_index
            tombstones = (
                kind == "hnsw" and self.kind == "hnsw" and bool(dropped) and not self._vectors_in_db
            )
            dead = len(self._alive.dead) + (len(dropped) if tombstones else 0)
            compact = compact or (
                tombstones and dead > COMPACT_FRACTION * (structure.ntotal + len(new_ids))
            )
            rebuild = (
                kind != self.kind
                or compact
                or (bool(dropped) and kind != "exact" and not tombstones)
            )
            if kind == "ivf" and not rebuild:
                trained = int((self._info.get("params") or {}).get("trained_on", 0))
                rebuild = count > 4 * max(trained, 1) or not _inner(structure).is_trained
            new_arr = np.asarray(new_ids, dtype=np.int64)
            if rebuild:
                structure = self._rebuilt(kind, structure, dropped, new_arr, new)
                if len(self._alive.dead):  # the rebuild leaves every tombstone out
                    conn.execute("DELETE FROM removed")
            else:
                if dropped and kind == "exact":  # IDMap2 over a flat index removes in place
                    structure.remove_ids(np.asarray(dropped, dtype=np.int64))
                if tombstones:
                    conn.executemany(
                        "INSERT INTO removed(id) VALUES (?)", [(int(i),) for i in dropped]
                    )
                _add(structure, new_arr, new)
            self._info["resolved_kind"] = kind
            values: dict[str, Any] = {"count": int(count), "generation": generation + 1}
            if rebuild or bool(new_ids) or (bool(dropped) and kind == "exact"):
                # (an HNSW removal alone leaves the graph, its file and its tuning as they were)
                removed = np.zeros(0, dtype=np.int64) if rebuild else self._removed_ids()
                id_map = _faiss().vector_to_array(structure.id_map).astype(np.int64)
                params, recall = self._tune_and_measure(structure, _Alive.of(id_map, removed))
                if kind == "ivf":
                    prev = (self._info.get("params") or {}).get("trained_on", 0)
                    params["trained_on"] = int(count if rebuild else prev)
                digest = _write_faiss(structure, pending)
                wrote = True
                values.update(resolved_kind=kind, params=params, recall=recall, faiss_sha256=digest)
            values["updated"] = _now()
            self._set_info(values)
            conn.execute("COMMIT")  # the commit point
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if wrote:
                with suppress(OSError):
                    pending.unlink()
            self._reload()
            raise
        self._faiss_index = structure
        self._structure_verified = True
        self._apply_search_params()
        # Past the commit point: the change is made (in memory and in SQLite) and the next
        # open completes the rename, so a failure here is a warning, not a failed update.
        try:
            if wrote:
                with suppress(FileNotFoundError):  # a reader's open() may have completed it
                    os.replace(pending, self.path / FAISS_NAME)
                _fsync_dir(self.path)
        except OSError as exc:
            warnings.warn(
                f"{self.path}: the change is committed, but {FAISS_NAME} could not be put in "
                f"place yet ({exc.strerror or exc}); the next open of the index completes it",
                stacklevel=3,
            )
            return
        try:
            self._write_summary()
        except OSError as exc:
            warnings.warn(
                f"{self.path}: the change is committed, but {JSON_NAME} (the readable summary) "
                f"could not be rewritten ({exc.strerror or exc}); the next change rewrites it",
                stacklevel=3,
            )

    def _rebuilt(
        self, kind: str, old: Any, dropped: list[int], new_ids: np.ndarray, new: _NewRows
    ) -> Any:
        """A new ``kind`` structure of the live vectors after a change: from SQLite (format 1,
        which already holds the change, checked) or from ``old`` (without ``dropped`` and the
        tombstones) plus the new rows."""
        if self._vectors_in_db:
            return self._build_structure(kind, self._stored_vectors())
        ids, vecs = _live_vectors(old, self._alive)
        if dropped:
            keep = ~np.isin(ids, np.asarray(dropped, dtype=np.int64))
            ids, vecs = ids[keep], vecs[keep]
        return self._build_structure(kind, (ids, vecs), (new_ids, new))

    def _reload(self, *, repair: bool = True) -> None:
        """Back to what is on disk (after a failed update, or when another process changed
        it: ``repair=False``, nothing is written)."""
        rows = self._conn.execute("SELECT key, value FROM info").fetchall()
        info = {k: json.loads(v) for k, v in rows}
        if (
            not repair
            and self._structure_verified
            and self._faiss_index is not None
            and info.get("faiss_sha256") is not None
            and info.get("faiss_sha256") == self._info.get("faiss_sha256")
            and info.get("resolved_kind") == self.kind
        ):
            # The same vectors.faiss as the one loaded (an HNSW removal): only the tombstones
            # moved; re-reading gigabytes of vectors would tell nothing new.
            self._info = info
            expected = np.union1d(self._db_ids(), self._removed_ids())
            if np.array_equal(_ids_of(self._faiss_index), expected):
                self._apply_search_params()
                return
        self._info = info
        self._faiss_index = None
        self._structure_verified = False
        self.recovered = None
        if repair:
            with suppress(Exception):
                self._load_structure()
        else:
            self._load_structure(repair=False)

    @_db_guard
    def refresh(self) -> bool:
        """Catch up with changes other processes committed since this index was opened (or
        last refreshed): one SQLite point query when nothing changed. Returns True when it
        reloaded. A long-lived reader (``vitrina serve``) calls this before each request."""
        identity = _file_identity(self.path / DB_NAME)
        if identity is None:
            raise IndexFolderError(f"{self.path}: index folder is gone ({DB_NAME} not found)")
        if identity != self._identity:  # deleted and built again at the same path
            self._reopen()
            return True
        if self._generation_on_disk() == self._info["generation"]:
            return False
        self._reload(repair=False)
        return True

    def _reopen(self) -> None:
        fresh = Index.open(
            self.path, backend=self.backend, device=self.device, batch_size=self.batch_size
        )
        if self._embedder is not None and fresh.fingerprint != self.fingerprint:
            fresh.close()
            raise IndexFolderError(
                f"{self.path}: was rebuilt with another model ({fresh.model_label}); open it "
                "again (restart the service)"
            )
        self._conn.close()
        self._conn, self._info, self._identity = fresh._conn, fresh._info, fresh._identity
        self._faiss_index, self._structure_verified = fresh._faiss_index, True
        self._alive, self._view = fresh._alive, None
        self.recovered = fresh.recovered

    def _set_info(self, values: dict[str, Any]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )
        self._info.update(values)

    # ------------------------------------------------------------------ searching

    @_db_guard
    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        embedder: Any = None,
        on_progress: ProgressFn | None = None,
    ) -> SearchResults:
        """The ``k`` nearest items for each query, one :class:`QueryResult` per query in order
        (also for a single query).

        ``queries``: photos as they come -- paths, PIL images, numpy image arrays (uint8
        ``(H, W, 3)`` / ``(H, W)``), torch tensors (``(C, H, W)``), one or a list -- embedded
        with the index's model; or vectors: a float numpy array ``(N, dim)`` or ``(dim,)``
        (a float array of one or two dimensions is always read as vectors; pass a float grey
        photo as a PIL image or in a list). Unreadable query photos get ``error`` and no hits."""
        if int(k) < 1:
            raise VitrinaError(f"k must be at least 1, got {k}")
        k = int(k)
        if _are_vectors(queries):
            x = _as_matrix(queries, self.dim, "search")
            names = [f"vector {i}" for i in range(len(x))]
            results = SearchResults(QueryResult(n) for n in names)
            order = list(range(len(x)))
        else:
            from vitrina.engine import as_items, item_name

            items, _ = as_items(queries)
            emb = self._check_embedder(embedder)
            res = emb.embed(items, on_progress=on_progress)
            results = SearchResults(
                QueryResult(str(q) if isinstance(q, str | os.PathLike) else item_name(q), item=q)
                for q in items
            )
            kept = set(res.rows)
            failed = [i for i in range(len(items)) if i not in kept]  # engine order = input order
            for i, (_name, reason) in zip(failed, res.errors, strict=True):
                results[i].error = reason
            order = list(res.rows)
            x = res.vectors
        if not len(x) or len(self) == 0:
            return results
        found = self._neighbours(x, k)
        for qi, r in zip(order, found.results(), strict=True):
            results[qi].hits = r.hits
        return results

    @_db_guard
    def search_vectors(self, vectors: Any, k: int = 10) -> Neighbours:
        """The ``k`` nearest items of each row of an (N, dim) array, as arrays (see
        :class:`Neighbours`): the batch path, with no Python object per result."""
        if int(k) < 1:
            raise VitrinaError(f"k must be at least 1, got {k}")
        return self._neighbours(_as_matrix(vectors, self.dim, "search"), int(k))

    def _neighbours(self, x: np.ndarray, k: int) -> Neighbours:
        """:meth:`search_vectors` for a checked float32 (N, dim) matrix ``x``."""
        n = len(x)
        kk = min(int(k), len(self))
        if not n or kk == 0:
            empty = np.full((n, 0), -1, dtype=np.int64)
            return Neighbours(empty, empty.astype(np.float32), self.metric, self._rows_by_id)
        if self.metric == "cosine":
            x = _l2_normalize(x)
        inner, id_map, params = self._search_view(kk)
        # Search the inner structure and map positions to ids ourselves: IndexIDMap2.search
        # translates labels in an OpenMP loop whose thread wake-up costs ~8 ms per call on
        # 2 cores, 15-30x the HNSW search of a single query.
        scores, pos = inner.search(x, kk, params=params)
        ids = id_map[pos]
        ids[pos < 0] = -1
        return Neighbours(ids, scores, self.metric, self._rows_by_id)

    def _search_view(self, k: int) -> tuple[Any, np.ndarray, Any]:
        """(inner structure, position -> id, faiss search parameters or None), cached until
        the structure is loaded or changed (:meth:`_apply_search_params` drops it); the
        parameters skip HNSW tombstones."""
        if self._view is None:
            structure = self._faiss_index
            ids = _faiss().vector_to_array(structure.id_map).astype(np.int64)
            self._view = (_inner(structure), ids)
            self._ef_search = int((self._info.get("params") or {}).get("efSearch", 64))
            self._view_ef = -1
            self._params: dict[int, Any] = {}
        inner, ids = self._view
        if self.kind != "hnsw":
            return inner, ids, None
        if self._alive.selector is None:
            ef = max(self._ef_search, k)
            if ef != self._view_ef:
                inner.hnsw.efSearch = self._view_ef = ef
            return inner, ids, None
        params = self._params.get(k)
        if params is None:
            params = self._params[k] = _faiss().SearchParametersHNSW()
            params.efSearch = max(self._ef_search, k)
            params.sel = self._alive.selector  # kept alive by self._alive
        return inner, ids, params

    def _rows_by_id(self, ids: set[int]) -> dict[int, tuple[str, str, str | None]]:
        """Metadata of ``ids``: from an in-memory table of every row, loaded once per index
        generation (a SQLite query per search was most of vitrina's overhead over raw faiss:
        ~0.3 ms of ~0.8 ms per single query at 200k items); SQLite directly above
        :data:`_META_CACHE_MAX` items."""
        key = self._info["generation"]
        if len(self) <= _META_CACHE_MAX:
            if getattr(self, "_meta_key", None) != key:
                self._meta = {
                    rid: (path, label, sha)
                    for rid, path, label, sha in self._conn.execute(
                        "SELECT id, path, label, sha256 FROM items"
                    )
                }
                self._meta_key = key
            meta = self._meta
            return {i: meta[i] for i in ids if i in meta}
        out: dict[int, tuple[str, str, str | None]] = {}
        idl = list(ids)
        q = "SELECT id, path, label, sha256 FROM items WHERE id IN (SELECT value FROM json_each(?))"
        for i in range(0, len(idl), 500):
            chunk = idl[i : i + 500]
            for rid, path, label, sha in self._conn.execute(q, (json.dumps(chunk),)):
                out[rid] = (path, label, sha)
        return out

    # ------------------------------------------------------------------ info / items / save

    @_db_guard
    def path_of(self, item_id: int) -> str | None:
        """The photo path of item ``item_id``, or None when no such item is indexed."""
        row = self._rows_by_id({int(item_id)}).get(int(item_id))
        return row[0] if row else None

    @_db_guard
    def items(self) -> list[dict[str, Any]]:
        """Every indexed item's metadata (no vectors), in id order."""
        cur = self._conn.execute(
            "SELECT id, path, sha256, size, mtime, label, added FROM items ORDER BY id"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]

    @_db_guard
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live items as stored (L2-normalized for cosine): a copy,
        yours to keep (the index's own memory moves as it changes)."""
        ids, vecs = self._stored_vectors()
        return ids.copy(), np.array(vecs, dtype=np.float32, copy=True)

    @_db_guard
    def info(self) -> dict[str, Any]:
        i = self._info
        size = sum(
            f.stat().st_size for f in self.path.iterdir() if f.is_file() and f.name[0] != "."
        )
        labels = dict(
            self._conn.execute(
                "SELECT label, COUNT(*) FROM items GROUP BY label ORDER BY label"
            ).fetchall()
        )
        return {
            "path": str(self.path),
            "format_version": i["format_version"],
            "count": len(self),
            "labels": labels,
            "dim": self.dim,
            "metric": self.metric,
            "kind": self.kind,
            "kind_requested": i["kind"],
            "params": i.get("params") or {},
            "recall": i.get("recall"),
            "model": self.model_label,
            "spec": i.get("spec"),
            "fingerprint": self.fingerprint,
            "generation": i["generation"],
            "root": i.get("root"),
            "created": i.get("created"),
            "updated": i.get("updated"),
            "bytes_on_disk": size,
            "vectors_stored_in": (
                f"{DB_NAME} and {FAISS_NAME} (format 1)" if self._vectors_in_db else FAISS_NAME
            ),
            "removed_pending_compaction": len(self._alive.dead),
            "auto_rule": f"exact below {AUTO_HNSW_THRESHOLD:,} vectors, hnsw from there on",
        }

    @_db_guard
    def save(self) -> None:
        """Every change is saved when it is made; this rewrites ``index.json``."""
        self._write_summary()

    def _write_summary(self) -> None:
        from vitrina.io.files import atomic_write_text

        info = self.info()
        info.pop("labels", None)
        atomic_write_text(self.path / JSON_NAME, json.dumps(info, indent=2) + "\n")


# --------------------------------------------------------------------------- module helpers

_REMOVED_TABLE = "CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY)"

_ITEMS_TABLE = """CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    sha256 TEXT UNIQUE,
    size INTEGER,
    mtime REAL,
    label TEXT NOT NULL DEFAULT '',
    added REAL NOT NULL,
    vector BLOB
)"""

#: Format 2: no vectors in SQLite (``vector`` stays, always NULL, so both formats read alike).
_SCHEMA = f"""
{_ITEMS_TABLE.format(name="items")};
CREATE INDEX items_path ON items(path);
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{_REMOVED_TABLE};
"""

#: Format 1 (the layout before issue 17; written only to test old folders): every vector is
#: also a float32 BLOB here.
_SCHEMA_V1 = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    sha256 TEXT UNIQUE,
    size INTEGER,
    mtime REAL,
    label TEXT NOT NULL DEFAULT '',
    added REAL NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX items_path ON items(path);
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db), isolation_level=None, timeout=30)  # explicit transactions
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _resolve_kind(kind: str, count: int) -> str:
    if kind == "auto":
        return "hnsw" if count >= AUTO_HNSW_THRESHOLD else "exact"
    return kind


def ivf_nlist(n: int) -> int:
    """~4 sqrt(N) lists, with at least 39 training points per list (faiss' minimum)."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 if n >= 39 else 1))


def _structure_kind(inner: Any) -> str:
    faiss = _faiss()
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "exact"


def _meta_row(m: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if not isinstance(m, dict):
        m = {"path": str(m)}
    if "path" not in m:
        raise VitrinaError(f"add_vectors: metadata {m!r} has no 'path'")
    return {
        "path": str(m["path"]),
        "sha256": m.get("sha256"),
        "size": m.get("size"),
        "mtime": m.get("mtime"),
        "label": str(m.get("label") or ""),
    }


def _match_rows(conn: sqlite3.Connection, item: str) -> list[tuple[int, str]]:
    low = item.lower()
    if len(low) >= 8 and all(c in "0123456789abcdef" for c in low) and not os.path.exists(item):
        rows = conn.execute(
            "SELECT id, path FROM items WHERE sha256 LIKE ?", (low + "%",)
        ).fetchall()
        if len(rows) > 1:
            raise VitrinaError(f"{item}: matches {len(rows)} hashes; give more digits")
        if rows:
            return rows
    p = Path(item)
    full = str(p.resolve()) if p.exists() else str(p.absolute())
    rows = conn.execute("SELECT id, path FROM items WHERE path IN (?, ?)", (full, item)).fetchall()
    if not rows and (p.is_dir() or not p.exists()):
        prefix = full.rstrip(os.sep) + os.sep
        rows = conn.execute(
            "SELECT id, path FROM items WHERE substr(path, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
    return rows


def _os_reason(exc: OSError) -> str:
    from vitrina.io.images import _os_reason as reason

    return reason(exc)


def _strip_path(path: str, msg: str) -> str:
    return msg[len(path) + 2 :] if msg.startswith(path + ": ") else msg


def _make_embedder(
    spec: Any,
    model: str | None,
    layers: Sequence[str],
    backend: str,
    device: str,
    batch_size: int,
) -> Any:
    from vitrina.embed import Embedder, EmbeddingSpec

    if spec is None:
        if not model:
            raise VitrinaError("no model given: pass model= (a run folder or a zoo name) or spec=")
        spec = EmbeddingSpec(str(model), layers=tuple(layers))
    return Embedder(spec, backend=backend, device=device, batch_size=batch_size)
