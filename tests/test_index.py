"""vitrina.search.Index: persistence, exact and approximate search, removal, crash safety."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_dataset, make_image
from vitrina.errors import VitrinaError
from vitrina.search import Index
from vitrina.search import index as index_mod


def clustered(n: int, d: int = 32, centres: int = 20, seed: int = 0, noise: float = 0.35):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d))
    return x.astype(np.float32)


def metas(n: int, start: int = 0):
    return [
        {"path": f"/photos/p{i}.jpg", "sha256": f"{i:064x}", "label": f"c{i % 3}"}
        for i in range(start, start + n)
    ]


def brute(x: np.ndarray, q: np.ndarray, metric: str, k: int) -> np.ndarray:
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        return np.argsort(-(qn @ xn.T), axis=1, kind="stable")[:, :k]
    d2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_matches_brute_force_and_persists(tmp_path: Path, metric: str) -> None:
    x = clustered(300)
    q = clustered(7, seed=9)
    idx = Index.create(tmp_path / "ix", dim=32, metric=metric, kind="exact")
    rep = idx.add_vectors(x, metas(300))
    assert len(rep.added) == 300 and len(idx) == 300
    idx.close()

    idx = Index.open(tmp_path / "ix")
    assert idx.recovered is None and idx.kind == "exact" and len(idx) == 300
    res = idx.search(q, k=5)
    want = brute(x, q, metric, 5)
    for r, w in zip(res, want, strict=True):
        assert [h.path for h in r.hits] == [f"/photos/p{i}.jpg" for i in w]
        assert [h.rank for h in r.hits] == [1, 2, 3, 4, 5]
        dists = [h.distance for h in r.hits]
        assert dists == sorted(dists)
    # the reported numbers are the real distances
    h = res[0].hits[0]
    v, qq = x[int(h.path[9:-4])], q[0]
    if metric == "cosine":
        cos = float(v @ qq / np.linalg.norm(v) / np.linalg.norm(qq))
        assert h.similarity == pytest.approx(cos, abs=1e-5)
        assert h.distance == pytest.approx(1 - cos, abs=1e-5)
    else:
        assert h.distance == pytest.approx(float(np.linalg.norm(v - qq)), rel=1e-4)
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["count"] == 300


def test_duplicate_is_a_noop_and_remove_by_path_and_hash(tmp_path: Path) -> None:
    x = clustered(50)
    idx = Index.create(tmp_path / "ix", dim=32)
    idx.add_vectors(x, metas(50))
    gen = idx.info()["generation"]
    rep = idx.add_vectors(x[:3], metas(3))  # same hashes again
    assert rep.added == [] and len(rep.duplicates) == 3
    assert len(idx) == 50 and idx.info()["generation"] == gen  # nothing written

    rm = idx.remove(["/photos/p0.jpg", f"{1:064x}", "/photos/nope.jpg"])
    assert sorted(rm.removed) == ["/photos/p0.jpg", "/photos/p1.jpg"]
    assert rm.not_found == ["/photos/nope.jpg"]
    idx = Index.open(tmp_path / "ix")
    assert len(idx) == 48
    hits = idx.search(x[:2], k=3)
    assert all(h.path not in ("/photos/p0.jpg", "/photos/p1.jpg") for r in hits for h in r.hits)
    # removed content can come back
    assert idx.add_vectors(x[:1], metas(1)).added == ["/photos/p0.jpg"]
    assert idx.search(x[:1], k=1)[0].hits[0].path == "/photos/p0.jpg"


def test_hnsw_recall_reported_and_removal_rebuilds(tmp_path: Path) -> None:
    x, q = np.split(clustered(3100, d=48, centres=40), [3000])  # q: unseen, same clusters
    idx = Index.create(tmp_path / "ix", dim=48, kind="hnsw")
    idx.add_vectors(x, metas(3000))
    info = idx.info()
    assert info["kind"] == "hnsw" and info["recall"]["recall_at_10"] >= 0.9
    assert info["recall"]["queries"] == 200 and info["params"]["efSearch"] >= 16
    # the reported recall is real: check it ourselves on other queries
    got = np.array([[int(h.path[9:-4]) for h in r.hits] for r in idx.search(q, k=10)])
    assert index_mod.recall_at_k(got, brute(x, q, "cosine", 10)) >= 0.9

    gone = [f"/photos/p{i}.jpg" for i in range(0, 3000, 7)]
    idx.remove(gone)
    idx = Index.open(tmp_path / "ix")
    assert idx.recovered is None and len(idx) == 3000 - len(gone) and idx.kind == "hnsw"
    paths = {h.path for r in idx.search(x[:200], k=10) for h in r.hits}
    assert not paths & set(gone)
    assert idx.info()["recall"]["recall_at_10"] >= 0.9


def test_ivf_and_auto_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(2000, d=32)
    ivf = Index.create(tmp_path / "ivf", dim=32, kind="ivf")
    ivf.add_vectors(x, metas(2000))
    assert ivf.kind == "ivf" and ivf.info()["recall"]["recall_at_10"] >= 0.9
    ivf.remove([f"{5:064x}"])
    assert len(Index.open(tmp_path / "ivf")) == 1999

    monkeypatch.setattr(index_mod, "AUTO_HNSW_THRESHOLD", 500)
    auto = Index.create(tmp_path / "auto", dim=32)
    auto.add_vectors(x[:400], metas(400))
    assert auto.kind == "exact"
    auto.add_vectors(x[400:600], metas(200, start=400))
    assert auto.kind == "hnsw" and auto.info()["recall"] is not None
    assert Index.open(tmp_path / "auto").kind == "hnsw"


def test_update_that_fails_before_commit_leaves_old_index(tmp_path: Path, monkeypatch) -> None:
    x = clustered(100)
    idx = Index.create(tmp_path / "ix", dim=32, kind="hnsw")
    idx.add_vectors(x[:60], metas(60))
    before = [h.path for h in idx.search(x[:1], k=5)[0].hits]

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    import faiss

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError):
        idx.add_vectors(x[60:], metas(40, start=60))
    # an HNSW removal is a tombstone in SQLite (vectors.faiss is not rewritten) ...
    idx.remove(["/photos/p0.jpg"])
    before = [p for p in before if p != "/photos/p0.jpg"]
    # ... and compacting it away has to write the file: it fails, the tombstone stays
    with pytest.raises(OSError):
        idx.compact()
    monkeypatch.undo()
    # the same object and a fresh open both see the old state
    assert len(idx) == 59 and idx.info()["removed_pending_compaction"] == 1
    assert [h.path for h in idx.search(x[:1], k=5)[0].hits][:4] == before
    again = Index.open(tmp_path / "ix")
    assert again.recovered is None and len(again) == 59
    assert [h.path for h in again.search(x[:1], k=5)[0].hits][:4] == before
    assert not list((tmp_path / "ix").glob("*.pending")) and not list(
        (tmp_path / "ix").glob(".vitrina-tmp-*")
    )


def test_crash_after_commit_is_completed_on_open(tmp_path: Path, monkeypatch) -> None:
    x = clustered(80)
    idx = Index.create(tmp_path / "ix", dim=32)
    idx.add_vectors(x[:50], metas(50))
    real = os.replace

    def crash(src, dst, *a, **k):
        if str(src).endswith(index_mod.PENDING_NAME):
            raise KeyboardInterrupt  # killed between the SQLite commit and the rename
        return real(src, dst, *a, **k)

    monkeypatch.setattr(index_mod.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        idx.add_vectors(x[50:], metas(30, start=50))
    monkeypatch.undo()
    again = Index.open(tmp_path / "ix")
    assert "interrupted update" in again.recovered and len(again) == 80
    assert again.search(x[70:71], k=1)[0].hits[0].path == "/photos/p70.jpg"
    assert Index.open(tmp_path / "ix").recovered is None  # repaired for good


KILL_SCRIPT = """
import os, sys, numpy as np
sys.path.insert(0, {tests!r})
from test_index import clustered, metas
from vitrina.search import Index, index as m
idx = Index.open({path!r})
stage = {stage!r}
if stage == "faiss":
    real = m._write_faiss
    def die(structure, dest):
        real(structure, dest)   # the pending file is on disk ...
        os._exit(9)             # ... and the process dies before the SQLite commit
    m._write_faiss = die
else:  # die after the commit, before the pending file is renamed into place
    real_replace = os.replace
    def die(src, dst, *a, **k):
        if str(src).endswith(m.PENDING_NAME):
            os._exit(9)
        return real_replace(src, dst, *a, **k)
    m.os.replace = die
idx.add_vectors(clustered(80)[50:], metas(30, start=50))
"""


@pytest.mark.parametrize("stage, count", [("faiss", 50), ("commit", 80)])
def test_killed_process_leaves_a_consistent_index(tmp_path: Path, stage: str, count: int) -> None:
    x = clustered(80)
    idx = Index.create(tmp_path / "ix", dim=32, kind="hnsw")
    idx.add_vectors(x[:50], metas(50))
    idx.close()
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), path=str(tmp_path / "ix"), stage=stage
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    again = Index.open(tmp_path / "ix")
    assert len(again) == count
    assert again.search(x[:1], k=1)[0].hits[0].path == "/photos/p0.jpg"
    if count == 80:
        assert again.recovered and again.search(x[79:80], k=1)[0].hits[0].path == "/photos/p79.jpg"


def test_faiss_file_lost_is_rebuilt_from_sqlite_in_format_1(tmp_path: Path) -> None:
    x = clustered(40)
    Index.create(tmp_path / "ix", dim=32, _format=1).add_vectors(x, metas(40))
    (tmp_path / "ix" / "vectors.faiss").write_bytes(b"garbage")
    again = Index.open(tmp_path / "ix")
    assert "rebuilt it from the 40 stored vectors" in again.recovered
    assert again.search(x[3:4], k=1)[0].hits[0].path == "/photos/p3.jpg"


def test_bad_index_folders_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(VitrinaError, match="index folder not found"):
        Index.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitrinaError, match="not a vitrina index"):
        Index.open(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.sqlite").write_text("hello")
    with pytest.raises(VitrinaError, match="not a vitrina index"):
        Index.open(foreign)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VitrinaError, match="not an index folder"):
        Index.open(tmp_path / "afile")
    # a build that never finished
    half = Index.create(tmp_path / "half", dim=4, _building=True)
    half.close()
    with pytest.raises(VitrinaError, match=r"index half-written: .*build was interrupted"):
        Index.open(tmp_path / "half")
    nodb = tmp_path / "nodb"
    Index.create(nodb, dim=4).close()
    (nodb / "meta.sqlite").unlink()
    with pytest.raises(VitrinaError, match="index half-written"):
        Index.open(nodb)
    # another format version
    Index.create(tmp_path / "v9", dim=4).close()
    with sqlite3.connect(tmp_path / "v9" / "meta.sqlite") as c:
        c.execute("UPDATE info SET value = '9' WHERE key = 'format_version'")
    with pytest.raises(VitrinaError, match="format version 9, this vitrina reads versions 1, 2"):
        Index.open(tmp_path / "v9")
    # never written over
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(VitrinaError, match="not an empty folder"):
        Index.create(tmp_path / "busy", dim=4)
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"


def test_bad_queries(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "ix", dim=8)
    idx.add_vectors(clustered(10, d=8), metas(10))
    with pytest.raises(VitrinaError, match="k must be at least 1"):
        idx.search(clustered(1, d=8), k=0)
    with pytest.raises(VitrinaError, match="8"):
        idx.search(np.zeros((1, 5), np.float32))
    with pytest.raises(VitrinaError, match="raw vectors and has no model"):
        idx.search(["x.jpg"])
    with pytest.raises(VitrinaError, match="NaN or infinite"):
        idx.search_vectors(np.full((2, 8), np.nan, np.float32))
    assert len(idx.search(clustered(1, d=8), k=50)[0].hits) == 10  # k > size: all of them


# ------------------------------------------------------------------ with a real model


def test_build_from_images_search_add_and_refuse_other_model(tmp_path: Path, toy_run: Path) -> None:
    from vitrina.embed import Embedder, EmbeddingSpec

    data = make_dataset(tmp_path / "data", per_class=4)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    idx = Index.build(data, tmp_path / "ix", model=str(toy_run), backend="eager", device="cpu")
    assert len(idx) == 12 and idx.kind == "exact"
    assert [p for p, _ in idx.build_report.unreadable] == [
        str((data / "red" / "broken.jpg").resolve())
    ]
    assert idx.info()["labels"] == {"blue": 4, "green": 4, "red": 4}

    query = make_image(tmp_path / "q" / "red-query.png", COLORS["red"], seed=777)
    missing = tmp_path / "q" / "nope.jpg"
    idx = Index.open(tmp_path / "ix", backend="eager", device="cpu")
    res = idx.search([query, missing], k=4)
    assert res[1].error and "nope.jpg" in res[1].error and not res[1].hits
    assert [h.label for h in res[0].hits] == ["red"] * 4

    # same content again: a no-op; a new photo: added with its folder as label
    copy = tmp_path / "more" / "red" / "same.jpg"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((data / "red" / "red-00.jpg").read_bytes())
    make_image(tmp_path / "more" / "green" / "new.png", COLORS["green"], seed=4242)
    rep = idx.add([tmp_path / "more"])
    assert len(rep.duplicates) == 1 and len(rep.added) == 1 and len(idx) == 13
    assert idx.items()[-1]["label"] == "green"

    other = Embedder(EmbeddingSpec(str(toy_run), normalize=False), backend="eager", device="cpu")
    with pytest.raises(VitrinaError, match="fingerprint") as exc:
        idx.search([query], embedder=other)
    assert idx.model_label in str(exc.value) and other.model_label in str(exc.value)
    with pytest.raises(VitrinaError, match="fingerprint"):
        idx.add([query], embedder=other)


def test_build_refuses_empty_and_unreadable_folders(tmp_path: Path, toy_run: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos")
    with pytest.raises(VitrinaError, match="no images found"):
        Index.build(tmp_path / "empty", tmp_path / "ix", model=str(toy_run))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"junk")
    with pytest.raises(VitrinaError, match="none of the 1 images could be read"):
        Index.build(bad, tmp_path / "ix2", model=str(toy_run), backend="eager", device="cpu")
    assert not (tmp_path / "ix2").exists()  # nothing half-built left behind


def test_lazy_export() -> None:
    import vitrina

    assert vitrina.Index is Index


# --------------------------------------------------------------------------- issue 13: integrity


def _file_swap(path: Path, a: bytes, b: bytes) -> None:
    data = path.read_bytes()
    i, j = data.index(a), data.index(b)
    assert len(a) == len(b) and i + len(a) <= j
    path.write_bytes(data[:i] + b + data[i + len(a) : j] + a + data[j + len(b) :])


def _stored(ix: Path, rid: int) -> bytes:
    with sqlite3.connect(ix / "meta.sqlite") as conn:
        return conn.execute("SELECT vector FROM items WHERE id = ?", (rid,)).fetchone()[0]


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
@pytest.mark.parametrize("legacy", [False, True], ids=["checksum", "no-checksum"])
def test_swapped_vector_rows_in_the_faiss_file_are_caught_and_repaired(
    tmp_path: Path, kind: str, legacy: bool
) -> None:
    """Issue 13 #2: two swapped rows made a dog's nearest neighbour a cat at similarity 1.0.
    Format 1 (vectors also in SQLite): repaired from the stored copy; format 2 below."""
    x = clustered(60)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32, kind=kind, _format=1).add_vectors(x, metas(60))
    if legacy:  # an index written before checksums were recorded
        with sqlite3.connect(ix / "meta.sqlite") as conn:
            conn.execute("DELETE FROM info WHERE key = 'faiss_sha256'")
    _file_swap(ix / "vectors.faiss", _stored(ix, 1), _stored(ix, 40))
    again = Index.open(ix)
    why = "did not match the stored vectors" if legacy else "failed its checksum (damaged)"
    assert (
        again.recovered and why in again.recovered and "rebuilt it from the 60" in again.recovered
    )
    for i in (0, 39):
        hit = again.search(x[i : i + 1], k=1)[0].hits[0]
        assert hit.path == f"/photos/p{i}.jpg" and hit.similarity == pytest.approx(1.0, abs=1e-5)
    fresh = Index.open(ix)
    assert fresh.recovered is None  # repaired on disk, checksum recorded


def test_a_damaged_float_is_caught_by_its_norm(tmp_path: Path) -> None:
    """Issue 13 #2: one flipped exponent bit gave "cosine sim 74463821824" (format 1 without
    a recorded checksum: only the norm can tell)."""
    x = clustered(40)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32, _format=1).add_vectors(x, metas(40))
    with sqlite3.connect(ix / "meta.sqlite") as conn:  # no checksum: only the norm can tell
        conn.execute("DELETE FROM info WHERE key = 'faiss_sha256'")
    data = bytearray((ix / "vectors.faiss").read_bytes())
    at = bytes(data).index(_stored(ix, 8)) + 4 * 5 + 3  # exponent byte of float 5 of item 8
    data[at] ^= 0x40
    (ix / "vectors.faiss").write_bytes(bytes(data))
    again = Index.open(ix)
    assert "held 1 damaged vector(s) (not of unit length)" in again.recovered
    sims = [h.similarity for r in again.search(x, k=5) for h in r.hits]
    assert max(sims) <= 1.0 + 1e-5


def test_damaged_stored_vectors_are_restored_from_a_verified_faiss_file(tmp_path: Path) -> None:
    """Format 1: meta.sqlite's vectors are the source of truth for rebuilds: a damaged one is
    restored from the checksum-verified faiss file instead of spreading into the next
    structure."""
    x = clustered(30)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32, kind="hnsw", _format=1).add_vectors(x, metas(30))
    good = _stored(ix, 3)
    bad = bytearray(good)
    bad[4 * 2 + 3] ^= 0x40
    with sqlite3.connect(ix / "meta.sqlite") as conn:
        conn.execute("UPDATE items SET vector = ? WHERE id = 3", (bytes(bad),))
    idx = Index.open(ix)
    assert idx.recovered is None  # the faiss file is fine; SQLite's copy is read on rebuild
    idx.remove(["/photos/p0.jpg"])  # HNSW: a removal rebuilds from the stored vectors
    assert "restored 1 damaged stored vector(s) from vectors.faiss" in idx.recovered
    assert _stored(ix, 3) == good
    assert idx.search(x[2:3], k=1)[0].hits[0].path == "/photos/p2.jpg"


def test_both_copies_damaged_is_one_line_with_the_rebuild_command(tmp_path: Path) -> None:
    x = clustered(20)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32, _format=1).add_vectors(x, metas(20))
    (ix / "vectors.faiss").write_bytes(b"garbage")
    with sqlite3.connect(ix / "meta.sqlite") as conn:
        conn.execute("UPDATE items SET vector = ? WHERE id = 4", (b"\xff" * 128,))
    with pytest.raises(index_mod.IndexDamagedError) as info:
        Index.open(ix)
    msg = str(info.value)
    assert "meta.sqlite: 1 stored vector(s) are damaged (items 4)" in msg
    assert "vitrina index build" in msg and "\n" not in msg


def _flip_bytes(db: Path, seed: int, where: str) -> None:
    import random

    data = bytearray(db.read_bytes())
    rng = random.Random(seed)
    for _ in range(20):
        if where == "pages":  # b-tree page headers: "database disk image is malformed"
            i = rng.randrange(1, len(data) // 4096) * 4096 + rng.randrange(12)
        else:
            i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("where", ["pages", "anywhere"])
def test_random_byte_flips_in_meta_sqlite_never_raise_sqlite_errors(
    tmp_path: Path, seed: int, where: str
) -> None:
    """Issue 13 #8: a damaged meta.sqlite gave `sqlite3.OperationalError: Could not decode to
    UTF-8` from search and `DatabaseError: malformed` from info: one line now, or it works."""
    x = clustered(200, d=64)
    ix = tmp_path / "ix"
    Index.create(ix, dim=64).add_vectors(x, metas(200))
    _flip_bytes(ix / "meta.sqlite", seed, where)
    try:
        idx = Index.open(ix)
        idx.search(x[:3], k=5)
        idx.info()
        idx.items()
        idx.vectors()
        idx.remove(["/photos/p7.jpg"])
    except VitrinaError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(ix) in msg, msg
        assert "rebuild" in msg or "not a vitrina index" in msg or "try again" in msg, msg


def test_undecodable_text_in_meta_sqlite_is_one_line(tmp_path: Path, capsys) -> None:
    from conftest import run_cli

    x = clustered(10)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32).add_vectors(x, metas(10))
    db = ix / "meta.sqlite"
    data = db.read_bytes()
    db.write_bytes(data.replace(b"/photos/p3.jpg", b"/photos/p\xff.jpg"))
    with pytest.raises(index_mod.IndexDamagedError, match=r"meta\.sqlite: damaged \(Could not"):
        Index.open(ix).search(x[3:4], k=3)
    _flip_bytes(db, 0, "pages")
    code, _, err = run_cli(capsys, "index", "info", ix)
    assert code == 1 and "Traceback" not in err and "meta.sqlite: damaged" in err


# --------------------------------------------------------------------------- issue 17: format 2


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_vectors_are_stored_once(tmp_path: Path) -> None:
    """Format 2: meta.sqlite holds no vector; the faiss file is the copy everything reads."""
    x = clustered(500, d=256)
    idx = Index.create(tmp_path / "ix", dim=256, metric="euclidean")
    idx.add_vectors(x, metas(500))
    with sqlite3.connect(tmp_path / "ix" / "meta.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM items WHERE vector IS NOT NULL").fetchone() == (0,)
    assert (tmp_path / "ix" / "meta.sqlite").stat().st_size < x.nbytes / 2  # no copy hides there
    again = Index.open(tmp_path / "ix")
    assert again.info()["format_version"] == 2
    assert again.info()["vectors_stored_in"] == "vectors.faiss"
    ids, vecs = again.vectors()
    assert np.array_equal(vecs[np.argsort(ids)], x)  # exactly what was added
    vecs[:] = 0  # the copy is the caller's: the index is untouched
    assert again.search(x[7:8], k=1)[0].hits[0].path == "/photos/p7.jpg"


def test_a_folder_written_by_the_previous_format_opens_searches_and_updates(
    tmp_path: Path,
) -> None:
    """tests/data/index_format1 was written by vitrina before issue 17 (format 1: vectors in
    meta.sqlite and vectors.faiss; 50 clustered 16-d vectors, p3 removed). It keeps working
    as it is, with its SQLite copy: updates write BLOBs, a lost faiss file is rebuilt."""
    import shutil

    ix = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "index_format1", ix)
    x = clustered(60, d=16, centres=6, seed=7)
    idx = Index.open(ix)
    assert idx.recovered is None and idx.info()["format_version"] == 1 and len(idx) == 49
    assert idx.info()["vectors_stored_in"] == "meta.sqlite and vectors.faiss (format 1)"
    want = [f"/photos/p{i}.jpg" for i in brute(np.delete(x[:50], 3, 0), x[:5], "cosine", 3)[0]]
    live = [i for i in range(50) if i != 3]
    want = [f"/photos/p{live[i]}.jpg" for i in brute(x[live], x[:5], "cosine", 3)[0]]
    assert [h.path for h in idx.search(x[:5], k=3)[0].hits] == want
    idx.add_vectors(x[50:], metas(10, start=50))
    idx.remove(["/photos/p5.jpg"])
    with sqlite3.connect(ix / "meta.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM items WHERE vector IS NOT NULL").fetchone() == (58,)
    idx.close()
    (ix / "vectors.faiss").write_bytes(b"garbage")
    again = Index.open(ix)
    assert "rebuilt it from the 58 stored vectors" in again.recovered
    assert again.search(x[55:56], k=1)[0].hits[0].path == "/photos/p55.jpg"
    assert "/photos/p5.jpg" not in {h.path for h in again.search(x[5:6], k=10)[0].hits}
    assert Index.open(ix).recovered is None


@pytest.mark.parametrize(
    "damage, why",
    [
        ("garbage", "could not be read"),
        ("missing", "was missing"),
        ("swap", "failed its checksum (damaged)"),
        ("exponent", "failed its checksum (damaged)"),
    ],
)
def test_format_2_damaged_faiss_file_is_refused_in_one_line(
    tmp_path: Path, damage: str, why: str
) -> None:
    """Format 2 keeps the vectors once: damage is still found (checksum, ids, norms), and with
    no second copy to rebuild from, opening says so in one line with the rebuild command."""
    x = clustered(40)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32, kind="hnsw").add_vectors(x, metas(40))
    stored = _unit(x)
    faiss_file = ix / "vectors.faiss"
    if damage == "garbage":
        faiss_file.write_bytes(b"garbage")
    elif damage == "missing":
        faiss_file.unlink()
    elif damage == "swap":
        _file_swap(faiss_file, stored[1].tobytes(), stored[30].tobytes())
    else:
        data = bytearray(faiss_file.read_bytes())
        data[bytes(data).index(stored[8].tobytes()) + 4 * 5 + 3] ^= 0x40
        faiss_file.write_bytes(bytes(data))
    with pytest.raises(index_mod.IndexDamagedError) as info:
        Index.open(ix)
    msg = str(info.value)
    assert "\n" not in msg and f"vectors.faiss: {why}" in msg
    assert "only copy of this index's 40 vectors" in msg and "vitrina index build" in msg


def test_hnsw_removal_is_a_tombstone_until_compaction(tmp_path: Path) -> None:
    x, q = np.split(clustered(2100, d=48, centres=40), [2000])
    idx = Index.create(tmp_path / "ix", dim=48, kind="hnsw")
    idx.add_vectors(x, metas(2000))
    faiss_file = tmp_path / "ix" / "vectors.faiss"
    before = faiss_file.read_bytes()
    gone = [f"/photos/p{i}.jpg" for i in range(0, 2000, 20)]  # 5%: below COMPACT_FRACTION
    assert len(idx.remove(gone).removed) == 100
    assert faiss_file.read_bytes() == before  # not rewritten
    assert len(idx) == 1900 and idx.info()["removed_pending_compaction"] == 100
    for searcher in (idx, Index.open(tmp_path / "ix")):
        assert searcher.recovered is None
        found = searcher.search_vectors(x, k=10)
        assert (found.ids >= 0).all()  # k live results for every query, no tombstone among them
        assert not {p for row in found.paths() for p in row} & set(gone)
    live = np.array([i for i in range(2000) if i % 20])
    got = idx.search_vectors(q, k=10).ids - 1  # ids are 1-based rows in insertion order
    assert index_mod.recall_at_k(got, live[brute(x[live], q, "cosine", 10)]) >= 0.9
    # a re-add of removed content is a new row, found again
    idx.add_vectors(x[:1], metas(1))
    assert idx.search(x[:1], k=1)[0].hits[0].path == "/photos/p0.jpg"
    assert idx.compact() == 100 and idx.info()["removed_pending_compaction"] == 0
    again = Index.open(tmp_path / "ix")
    assert again.recovered is None and again._faiss_index.ntotal == 1901
    assert again.info()["recall"]["recall_at_10"] >= 0.9
    # past COMPACT_FRACTION a removal compacts by itself
    again.remove([f"/photos/p{i}.jpg" for i in range(1, 400, 2)])
    assert again.info()["removed_pending_compaction"] == 0 and again._faiss_index.ntotal == 1701


def test_a_reader_sees_a_tombstone_without_reading_the_faiss_file_again(tmp_path: Path) -> None:
    x = clustered(300)
    writer = Index.create(tmp_path / "ix", dim=32, kind="hnsw")
    writer.add_vectors(x, metas(300))
    reader = Index.open(tmp_path / "ix")
    loaded = reader._faiss_index
    assert reader.search(x[4:5], k=1)[0].hits[0].path == "/photos/p4.jpg"
    writer.remove(["/photos/p4.jpg"])
    assert reader.refresh() and reader._faiss_index is loaded
    assert "/photos/p4.jpg" not in {h.path for h in reader.search(x[4:5], k=10)[0].hits}
    assert len(reader) == 299
    writer.add_vectors(x[4:5], [{"path": "/photos/again.jpg", "sha256": "f" * 64}])
    assert reader.refresh() and reader._faiss_index is not loaded  # a new file: read again
    assert reader.search(x[4:5], k=1)[0].hits[0].path == "/photos/again.jpg"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_batch_search_arrays_match_the_hits(tmp_path: Path, metric: str, kind: str) -> None:
    x = clustered(200)
    idx = Index.create(tmp_path / "ix", dim=32, metric=metric, kind=kind)
    idx.add_vectors(x, metas(200))
    idx.remove(["/photos/p1.jpg"])
    q = clustered(6, seed=3)
    found = idx.search_vectors(q, k=4)
    assert found.ids.shape == found.distances.shape == found.similarities.shape == (6, 4)
    assert found.ids.dtype == np.int64 and isinstance(found.scores, np.ndarray)
    for row, hits, paths in zip(found.ids, idx.search(q, k=4), found.paths(), strict=True):
        assert [h.id for h in hits.hits] == row.tolist()
        assert [h.path for h in hits.hits] == paths
    r = found.results()[2].hits
    assert [h.distance for h in r] == pytest.approx(found.distances[2].tolist())
    assert [h.similarity for h in r] == pytest.approx(found.similarities[2].tolist())
    if kind == "exact":  # the fast path against the plain one: brute force over what is live
        live = [i for i in range(200) if i != 1]
        want = np.array(live)[brute(x[live], q, metric, 4)] + 1
        assert np.array_equal(found.ids, want)
    # fewer items than k: no padding, every item once
    small = Index.create(tmp_path / "small", dim=32, metric=metric)
    small.add_vectors(x[:2], metas(2))
    few = small.search_vectors(q[:1], k=5)
    assert few.ids.shape == (1, 2) and len(few.results()[0].hits) == 2
    with pytest.raises(VitrinaError, match="k must be at least 1"):
        small.search_vectors(q, k=0)


def test_upgrade_drops_the_second_copy_of_a_format_1_folder(tmp_path: Path) -> None:
    import shutil

    ix = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "index_format1", ix)
    x = clustered(60, d=16, centres=6, seed=7)
    idx = Index.open(ix)
    ids_before, vecs_before = idx.vectors()
    size_before = (ix / "meta.sqlite").stat().st_size
    faiss_before = (ix / "vectors.faiss").read_bytes()
    assert idx.upgrade() and not idx.upgrade()  # the second call: already format 2
    assert (ix / "vectors.faiss").read_bytes() == faiss_before  # not rewritten
    with sqlite3.connect(ix / "meta.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM items WHERE vector IS NOT NULL").fetchone() == (0,)
    assert (ix / "meta.sqlite").stat().st_size <= size_before
    again = Index.open(ix)
    assert again.recovered is None and again.info()["format_version"] == 2
    ids, vecs = again.vectors()
    order = np.argsort(ids)
    assert np.array_equal(ids[order], ids_before) and np.array_equal(vecs[order], vecs_before)
    # row ids are never reused: p49 (id 50) was the last row, p3 (id 4) was removed
    again.add_vectors(x[50:51], metas(1, start=50))
    assert again.items()[-1]["id"] == 51
    again.remove(["/photos/p0.jpg"])  # format 2 now: an HNSW removal is a tombstone
    assert again.info()["removed_pending_compaction"] == 1
    assert Index.open(ix).search(x[50:51], k=1)[0].hits[0].path == "/photos/p50.jpg"


def test_upgrade_refuses_when_the_two_copies_disagree(tmp_path: Path) -> None:
    x = clustered(30)
    ix = tmp_path / "ix"
    Index.create(ix, dim=32, _format=1).add_vectors(x, metas(30))
    a, b = _stored(ix, 2), _stored(ix, 9)
    with sqlite3.connect(ix / "meta.sqlite") as conn:  # unit length both: only a compare tells
        conn.execute("UPDATE items SET vector = ? WHERE id = 2", (b,))
        conn.execute("UPDATE items SET vector = ? WHERE id = 9", (a,))
    idx = Index.open(ix)
    with pytest.raises(index_mod.IndexDamagedError, match="hold different vectors; not upgraded"):
        idx.upgrade()
    assert Index.open(ix).info()["format_version"] == 1
