"""Near-duplicate photos: groups of photos whose embeddings are within a cosine-similarity
threshold of each other.

Files with identical bytes (same sha256) always group and are embedded once. The other
photos are linked when one is among the other's ``k`` nearest neighbours (faiss, exact inner
product on L2-normalized vectors; HNSW above 50,000 photos) with cosine similarity >=
``threshold``; groups are the connected components of that graph (union-find).

The first photo of a group is the one to keep: most pixels, then the biggest file, then the
path. Each member's similarity is to that first photo.

:data:`DEFAULT_THRESHOLD` (0.88) is measured, for EfficientNet-Lite0 (ImageNet weights, its own
L2-normalized embedding), on 200 cats/dogs photos (every 5th of ``../shared/data/cats_dogs``):

============================  ======  =====  ======  ============================
cosine similarity to...        min     p1     median  caught at 0.88
============================  ======  =====  ======  ============================
copy at 90%, JPEG q85          0.912   0.929  0.988   100%
copy at 60%, JPEG q70          0.680   0.751  0.934   85%
most similar other photo       -       -      0.628   max 0.817: 0 false pairs
============================  ======  =====  ======  ============================

0.88 lies between the closest pair of different photos (0.817) and the farthest mild copy
(0.912), nearer the copies so that larger folders (whose closest different pair is closer)
stay clean. Heavy edits need a lower ``--threshold`` (0.80 catches 97.5% of the 60%/q70
copies, with 1% false pairs here). Other models have other scales: re-measure with
``python -m vitrina.search.dedupe --measure DIR MODEL``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.errors import VitrinaError
from vitrina.io import IMAGE_EXTENSIONS_TEXT

__all__ = [
    "DEFAULT_THRESHOLD",
    "DedupeReport",
    "Member",
    "find_duplicates",
    "move_duplicates",
    "write_csv",
    "write_sheet",
]

DEFAULT_THRESHOLD = 0.88
NEIGHBOURS = 16
HNSW_ABOVE = 50_000


@dataclass
class Member:
    path: str
    sha256: str
    similarity: float  # cosine similarity to the group's first photo (1.0 for itself)
    exact: bool  # same bytes as the group's first photo
    moved_to: str | None = None


@dataclass
class DedupeReport:
    groups: list[list[Member]]
    errors: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    threshold: float = DEFAULT_THRESHOLD
    model: str = ""

    @property
    def duplicates(self) -> int:
        """Photos that are not the first of their group."""
        return sum(len(g) - 1 for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "threshold": self.threshold,
            "model": self.model,
            "groups": [[m.__dict__ for m in g] for g in self.groups],
            "errors": [{"path": p, "error": e} for p, e in self.errors],
        }


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def neighbour_pairs(
    vectors: np.ndarray, threshold: float, k: int = NEIGHBOURS
) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with i < j for every k-NN edge with cosine similarity >= threshold.
    ``vectors`` must be L2-normalized."""
    import faiss

    n, d = vectors.shape
    if n < 2:
        return []
    if n >= HNSW_ABOVE:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(d)
    index.add(vectors)
    sims, nbrs = index.search(vectors, min(k + 1, n))
    pairs: dict[tuple[int, int], float] = {}
    for i, (srow, nrow) in enumerate(zip(sims, nbrs, strict=True)):
        for s, j in zip(srow, nrow, strict=True):
            if j < 0 or j == i or s < threshold:
                continue
            key = (min(i, int(j)), max(i, int(j)))
            pairs[key] = max(pairs.get(key, -1.0), float(s))
    return [(a, b, s) for (a, b), s in sorted(pairs.items())]


def find_duplicates(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    model: str | None = None,
    spec: Any = None,
    embedder: Any = None,
    threshold: float = DEFAULT_THRESHOLD,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> DedupeReport:
    """Group near-duplicate photos under ``sources`` (folders are searched recursively)."""
    from vitrina.io.images import file_digest, image_size
    from vitrina.search.index import _l2_normalize, _make_embedder, collect_images

    if not -1.0 <= threshold <= 1.0:
        raise VitrinaError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    srcs = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    for s in srcs:
        if not Path(s).exists():
            raise VitrinaError(f"{s}: not found")
    found = [p for p, _root in collect_images(srcs)]
    if not found:
        raise VitrinaError(
            f"{', '.join(str(s) for s in srcs)}: no images found (looked for "
            f"{IMAGE_EXTENSIONS_TEXT} files, recursively)"
        )
    if embedder is None:
        embedder = _make_embedder(spec, model, (), backend, device, batch_size)
    report = DedupeReport([], images=len(found), threshold=threshold, model=embedder.model_label)

    by_hash: dict[str, list[Path]] = {}
    for p in found:
        try:
            by_hash.setdefault(file_digest(p), []).append(p)
        except OSError as exc:
            report.errors.append((str(p), exc.strerror or str(exc)))
    hashes = list(by_hash)
    reps = [by_hash[h][0] for h in hashes]
    res = embedder.embed_paths(reps, on_progress=on_progress)
    bad = {str(p): msg for p, msg in res.errors}
    for h, rep in zip(hashes, reps, strict=True):
        if str(rep) in bad:
            report.errors.extend((str(p), bad[str(rep)]) for p in by_hash[h])
    rep_hash = {str(r): h for h, r in zip(hashes, reps, strict=True)}
    ok_hashes = [rep_hash[str(p)] for p in res.paths]
    vectors = _l2_normalize(np.asarray(res.vectors, dtype=np.float32))

    uf = _UnionFind(len(ok_hashes))
    for a, b, _s in neighbour_pairs(vectors, threshold):
        uf.union(a, b)
    comps: dict[int, list[int]] = {}
    for i in range(len(ok_hashes)):
        comps.setdefault(uf.find(i), []).append(i)

    def keep_key(p: Path) -> tuple[int, int, str]:
        try:
            w, h = image_size(p)
            pixels = w * h
        except Exception:
            pixels = 0
        try:
            size = p.stat().st_size
        except OSError:
            size = 0
        return (-pixels, -size, str(p))

    for members in comps.values():
        files = [(p, i) for i in members for p in by_hash[ok_hashes[i]]]
        if len(files) < 2:
            continue
        files.sort(key=lambda pi: keep_key(pi[0]))
        first_i = files[0][1]
        first_vec = vectors[first_i]
        group = []
        for p, i in files:
            same = ok_hashes[i] == ok_hashes[first_i]
            sim = 1.0 if same else float(np.clip(vectors[i] @ first_vec, -1.0, 1.0))
            group.append(Member(str(p), ok_hashes[i], round(sim, 6), same))
        report.groups.append(group)
    report.groups.sort(key=lambda g: g[0].path)
    return report


def write_csv(report: DedupeReport, out: str | os.PathLike[str]) -> Path:
    """group, path, similarity (to the group's first), exact, kept, moved_to, sha256."""
    from vitrina.io.files import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "path", "similarity", "exact", "kept", "moved_to", "sha256"])
    for gi, group in enumerate(report.groups, 1):
        for mi, m in enumerate(group):
            w.writerow(
                [
                    gi,
                    m.path,
                    f"{m.similarity:.4f}",
                    int(m.exact),
                    int(mi == 0),
                    m.moved_to or "",
                    m.sha256,
                ]
            )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    return path


def write_sheet(report: DedupeReport, out: str | os.PathLike[str]) -> Path:
    """A contact sheet PNG with a row per group: the photo kept first, then each duplicate
    (where it was moved, if it was) captioned "same bytes" or its similarity to the first."""
    from vitrina.report.sheets import SheetRow, Tile, write_contact_sheet

    rows = [
        SheetRow(
            f"group {gi}: {len(g)} photos",
            [Tile(g[0].path, "kept")]
            + [
                Tile(m.moved_to or m.path, "same bytes" if m.exact else f"sim {m.similarity:.3f}")
                for m in g[1:]
            ],
        )
        for gi, g in enumerate(report.groups, 1)
    ]
    return write_contact_sheet(rows, out)


def move_duplicates(
    report: DedupeReport,
    dest: str | os.PathLike[str],
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, str]]:
    """Move every photo but the first of each group into ``dest`` (verified copy, then delete;
    never overwrites: a clashing name gets ``-N``). Returns (source, destination) pairs; a
    photo that cannot be moved is recorded in ``report.errors`` and the rest go on."""
    from vitrina.errors import DiskFullError
    from vitrina.io.files import place_file

    target = Path(dest)
    total = report.duplicates
    done = 0
    moved: list[tuple[str, str]] = []
    for group in report.groups:
        for m in group[1:]:
            try:
                final, _already = place_file(m.path, target, method="move")
            except DiskFullError:
                raise  # every further move would fail the same way
            except VitrinaError as exc:
                report.errors.append((m.path, str(exc)))
            else:
                m.moved_to = str(final)
                moved.append((m.path, str(final)))
            done += 1
            if on_progress:
                on_progress(done, total)
    return moved


def measure_threshold(
    folder: str | os.PathLike[str], *, model: str = "efficientnet_lite0", n: int = 200
) -> dict[str, Any]:
    """The measurement behind :data:`DEFAULT_THRESHOLD`: each photo's similarity to an edited
    copy of itself (90% / JPEG q85 and 60% / q70) and to the most similar *other* photo."""
    import tempfile

    from PIL import Image

    from vitrina.embed import Embedder
    from vitrina.io.images import read_image
    from vitrina.search.index import _l2_normalize, collect_images

    found = [p for p, _ in collect_images([folder])]
    photos = found[:: max(1, len(found) // n)][:n]
    emb = Embedder(model)
    va = _l2_normalize(emb.embed_paths(photos).vectors)
    cross = va @ va.T
    np.fill_diagonal(cross, -1.0)
    other = cross.max(axis=1)
    out: dict[str, Any] = {"photos": len(va), "other_max": float(other.max())}
    out["other_p99"] = float(np.percentile(other, 99))
    with tempfile.TemporaryDirectory() as tmp:
        for scale, quality in ((0.9, 85), (0.6, 70)):
            copies = []
            for i, p in enumerate(photos):
                im = read_image(p)
                size = (max(1, int(im.width * scale)), max(1, int(im.height * scale)))
                c = Path(tmp) / f"{scale}-{i}.jpg"
                im.resize(size, Image.Resampling.BILINEAR).save(c, quality=quality)
                copies.append(c)
            same = np.sum(va * _l2_normalize(emb.embed_paths(copies).vectors), axis=1)
            out[f"copy_{scale}_q{quality}"] = {
                "min": float(same.min()),
                "p01": float(np.percentile(same, 1)),
                "median": float(np.median(same)),
                "caught_at_default": float((same >= DEFAULT_THRESHOLD).mean()),
            }
    out["false_pairs_at_default"] = float((other >= DEFAULT_THRESHOLD).mean())
    return out


if __name__ == "__main__":  # python -m vitrina.search.dedupe --measure DIR [MODEL]
    import json
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "--measure":
        print(
            json.dumps(
                measure_threshold(sys.argv[2], model=(sys.argv[3:] or ["efficientnet_lite0"])[0]),
                indent=2,
            )
        )
