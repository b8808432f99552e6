"""Identity datasets (re-identification): a folder per person, or the Market-1501 layout.

Conventions, shared by the scanner, ``to_market`` and whoever evaluates on the result:

* ``pid`` is the dataset's identity number. Market-1501 defines ``-1`` as *junk* (a bad box:
  not in training, not ranked in the gallery) and ``0`` as a *distractor* (a real box of nobody
  in the set: a negative in the gallery). A folder-per-identity set numbers its identities
  ``1..N`` in sorted order of folder name, exactly as ``to_market`` does.
* ``camid`` is the camera number as written in the name (``c3`` -> 3, so 1-based); ``-1``
  means unknown (folder sets). Unknown cameras must never count as "the same camera".
* ``label`` indexes ``IdentitySet.names`` and is ``0..n-1`` over the *train* identities;
  query and gallery images have ``label = -1`` (their people are not trained on).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from vitrina.data.folder import iter_image_files, scan_folder
from vitrina.errors import DataError, VitrinaError
from vitrina.io import atomic_write_text, atomic_writer, is_image_path

__all__ = [
    "FACE_CHIPS_FORMAT",
    "FACE_CHIPS_MANIFEST",
    "MARKET_SPLITS",
    "IdentityImage",
    "IdentitySet",
    "MarketName",
    "ToMarketReport",
    "is_face_chips",
    "parse_market_name",
    "scan_identities",
    "to_market",
]

#: ``vitrina faces chips`` writes this manifest beside the chips it aligns (one folder per
#: person): a folder holding it is a face set, whatever its images are named.
FACE_CHIPS_MANIFEST = "chips.json"
FACE_CHIPS_FORMAT = "vitrina-face-chips"


def is_face_chips(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds aligned face chips written by ``vitrina faces chips`` (its
    manifest, :data:`FACE_CHIPS_MANIFEST`, with the format :data:`FACE_CHIPS_FORMAT`); a
    missing or unreadable manifest is "no"."""
    path = Path(root) / FACE_CHIPS_MANIFEST
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FACE_CHIPS_FORMAT


JUNK_PID = -1
DISTRACTOR_PID = 0
UNKNOWN_CAMERA = -1
# split -> folder, in the order the benchmark ships them
MARKET_SPLITS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
MARKET_PATTERN = "PPPP_cCsS_FFFFFF_NN.<ext> (e.g. 0001_c1s1_001051_00.jpg)"
_MARKET_RE = re.compile(r"(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)")


@dataclass(frozen=True)
class MarketName:
    """The fields of a Market-1501 file name ``PPPP_cCsS_FFFFFF_NN``: person, camera, sequence,
    frame, box index within the frame."""

    pid: int
    camid: int
    seq: int
    frame: int
    box: int


def parse_market_name(name: str | os.PathLike[str]) -> MarketName:
    """Parse ``0001_c1s1_001051_00.jpg`` (any image extension); ``-1_...`` is junk, ``0000_...``
    a distractor. Raise ``DataError`` for anything else."""
    p = Path(name)
    m = _MARKET_RE.fullmatch(p.stem) if is_image_path(p) else None
    if m is None:
        raise DataError(f"{p.name!r} is not a Market-1501 image name; expected {MARKET_PATTERN}")
    pid, cam, seq, frame, box = (int(g) for g in m.groups())
    return MarketName(pid, cam, seq, frame, box)


@dataclass(frozen=True)
class IdentityImage:
    """One image of one person (see the module docstring for ``pid``/``camid``/``label``)."""

    path: Path
    pid: int
    camid: int
    label: int


@dataclass
class IdentitySet:
    """An identity dataset read by ``scan_identities``.

    ``layout == "folders"``: every image is in ``train`` and ``query``/``gallery`` are empty
    (split it with ``to_market`` to evaluate). ``"market1501"``: the benchmark's three splits.
    ``names[label]`` is the folder name (folders) or the zero-padded pid (Market).
    """

    root: Path
    layout: Literal["folders", "market1501"]
    names: list[str]
    train: list[IdentityImage]
    query: list[IdentityImage] = field(default_factory=list)
    gallery: list[IdentityImage] = field(default_factory=list)
    skipped_junk: int = 0  # pid -1 in train/query (gallery keeps them for the evaluator to drop)
    skipped_distractors: int = 0  # pid 0 in train/query (gallery keeps them as negatives)
    skipped_hidden: int = 0
    skipped_non_image: list[Path] = field(default_factory=list)


def scan_identities(root: str | Path) -> IdentitySet:
    """Read ``root`` as Market-1501 when it holds ``bounding_box_train/``, ``bounding_box_test/``
    and ``query/``; otherwise as ``root/<identity>/**/<image>`` (at least 2 identities)."""
    root = Path(root)
    present = [d for d in MARKET_SPLITS.values() if (root / d).is_dir()]
    if present:
        missing = [d for d in MARKET_SPLITS.values() if d not in present]
        if missing:
            raise DataError(
                f"{root}: looks like Market-1501 ({', '.join(present)}) but lacks "
                f"{', '.join(m + '/' for m in missing)}"
            )
        return _scan_market(root)
    return _scan_folders(root)


def _scan_folders(root: Path) -> IdentitySet:
    scan = scan_folder(root, min_classes=1)
    if len(scan.classes) < 2:
        raise DataError(
            f"{root}: only {len(scan.classes)} identity folder with images ({scan.classes[0]!r}); "
            "an identity set needs at least 2 (one sub-folder per person)"
        )
    train = [IdentityImage(s.path, s.label + 1, UNKNOWN_CAMERA, s.label) for s in scan.samples]
    return IdentitySet(
        root,
        "folders",
        scan.classes,
        train,
        skipped_hidden=scan.skipped_hidden,
        skipped_non_image=scan.skipped_non_image,
    )


def _scan_market(root: Path) -> IdentitySet:
    parsed: dict[str, list[tuple[Path, MarketName]]] = {}
    hidden = 0
    non_images: list[Path] = []
    for split, folder in MARKET_SPLITS.items():
        images, h, non = iter_image_files(root / folder)
        hidden += h
        non_images += non
        parsed[split] = _parse_folder(root / folder, images)

    def keep(split: str) -> list[tuple[Path, MarketName]]:
        if split == "gallery":
            return parsed[split]
        return [(p, n) for p, n in parsed[split] if n.pid > DISTRACTOR_PID]

    skipped = [n.pid for s in ("train", "query") for _, n in parsed[s] if n.pid <= DISTRACTOR_PID]
    train_pids = sorted({n.pid for _, n in keep("train")})
    label_of = {pid: i for i, pid in enumerate(train_pids)}
    train = [IdentityImage(p, n.pid, n.camid, label_of[n.pid]) for p, n in keep("train")]
    query, gallery = (
        [IdentityImage(p, n.pid, n.camid, -1) for p, n in keep(s)] for s in ("query", "gallery")
    )
    if not (train or query or gallery):
        raise DataError(f"{root}: the Market-1501 folders hold no images")
    return IdentitySet(
        root,
        "market1501",
        [f"{pid:04d}" for pid in train_pids],
        train,
        query,
        gallery,
        skipped_junk=skipped.count(JUNK_PID),
        skipped_distractors=skipped.count(DISTRACTOR_PID),
        skipped_hidden=hidden,
        skipped_non_image=non_images,
    )


def _parse_folder(folder: Path, images: list[Path]) -> list[tuple[Path, MarketName]]:
    """Parse every name; collect the malformed ones into one error."""
    good: list[tuple[Path, MarketName]] = []
    bad: list[str] = []
    for p in images:
        try:
            good.append((p, parse_market_name(p)))
        except DataError:
            bad.append(p.name)
    if bad:
        first = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise DataError(
            f"{folder}: {len(bad)} file name{'s' if len(bad) > 1 else ''} not in Market-1501 "
            f"form ({first}); expected {MARKET_PATTERN}"
        )
    return good


# --------------------------------------------------------------------------- to_market


@dataclass
class ToMarketReport:
    """What ``to_market`` wrote: identity and image counts per split, and what it left out."""

    dst: Path
    train_ids: int
    train_images: int
    query_ids: int
    query_images: int
    gallery_ids: int
    gallery_images: int
    skipped_train_singletons: int  # train identities with 1 image: not written
    gallery_only_singletons: int  # test identities with 1 image: gallery only, never queried

    def to_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def to_market(
    src: str | Path,
    dst: str | Path,
    *,
    train_ids: int | None = None,
    train_fraction: float | None = None,
    cameras: int = 6,
    queries_per_id: int | None = None,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> ToMarketReport:
    """Copy a folder-per-identity set into the Market-1501 layout under an empty ``dst``.

    Rules (deterministic for the same input and ``seed``):

    * Identities are split, never images: ``train_ids`` people (else ``round(N *
      train_fraction)``, default 0.5, kept within 1..N-1) go to ``bounding_box_train``, the
      rest are test. Give one of the two, not both.
    * pid = 1..N in sorted order of identity folder name (as ``scan_identities`` numbers them).
    * Cameras: an identity's images (sorted by path) are shuffled with seed ``f"{seed}:{name}"``;
      the i-th gets frame ``i``, sequence 1, box 0. Train images get camera ``i % cameras + 1``.
    * Query: camera 1 is the query camera. A test identity with n images has q queries, its
      first q images, on camera 1: ``queries_per_id`` (at most n - 1), by default every image
      camera 1 would get, ``ceil(n / cameras)`` (so small sets give several queries per
      person and stable figures). Its other images go to ``bounding_box_test`` on cameras
      2..``cameras`` in turn, so every query has gallery matches from other cameras only. A
      test identity with one image goes to the gallery only; a train identity with one image
      is skipped (it cannot form a positive pair).
    * Files are byte copies named ``{pid:04d}_c{cam}s1_{frame:06d}_00{original suffix}``,
      written atomically; the source is only read. ``dst/identities.json`` maps pid -> folder
      name and each written file (relative to ``dst``) -> its source (relative to ``src``).
    """
    src, dst = Path(src), Path(dst)
    if cameras < 2:
        raise VitrinaError(f"--cameras {cameras}: need at least 2 (queries match across cameras)")
    if queries_per_id is not None and queries_per_id < 1:
        raise VitrinaError(f"--queries-per-id {queries_per_id}: must be at least 1")
    ids = scan_identities(src)
    if ids.layout != "folders":
        raise DataError(f"{src}: already in the Market-1501 layout; nothing to convert")
    _check_dst(src, dst)
    n_train = _train_count(src, len(ids.names), train_ids, train_fraction)

    by_label: dict[int, list[Path]] = {}
    for img in ids.train:
        by_label.setdefault(img.label, []).append(img.path)
    order = list(range(len(ids.names)))
    random.Random(seed).shuffle(order)
    train_labels = set(order[:n_train])

    plan: list[tuple[str, Path, str]] = []  # (split folder, source, market file name)
    counts: dict[str, set[int]] = {s: set() for s in MARKET_SPLITS}  # pids per split
    skipped_train = gallery_only = 0
    for label, name in enumerate(ids.names):
        pid = label + 1
        paths = sorted(by_label[label])
        random.Random(f"{seed}:{name}").shuffle(paths)  # str seeds are stable across runs
        if label in train_labels and len(paths) < 2:
            skipped_train += 1
            continue
        if label not in train_labels and len(paths) < 2:
            gallery_only += 1
        n = len(paths)
        q = 0
        if label not in train_labels and n > 1:
            q = min(n - 1, queries_per_id or -(-n // cameras))
        for i, path in enumerate(paths):
            if label in train_labels:
                split, cam = "train", i % cameras + 1
            elif i < q:
                split, cam = "query", 1
            else:
                split, cam = "gallery", (i - q) % (cameras - 1) + 2
            counts[split].add(pid)
            fname = f"{pid:04d}_c{cam}s1_{i:06d}_00{path.suffix}"
            plan.append((MARKET_SPLITS[split], path, fname))

    files = _write_market(dst, plan, on_progress)
    meta = {
        "format": "market1501",
        "source": str(src.resolve()),
        "seed": seed,
        "cameras": cameras,
        "queries_per_id": queries_per_id,
        "identities": {str(i + 1): n for i, n in enumerate(ids.names)},
        "files": {rel: str(p.relative_to(src)) for rel, p in files.items()},
    }
    atomic_write_text(dst / "identities.json", json.dumps(meta, indent=1, ensure_ascii=False))
    n_split = {s: sum(1 for f, _, _ in plan if f == MARKET_SPLITS[s]) for s in MARKET_SPLITS}
    return ToMarketReport(
        dst,
        len(counts["train"]),
        n_split["train"],
        len(counts["query"]),
        n_split["query"],
        len(counts["gallery"]),
        n_split["gallery"],
        skipped_train,
        gallery_only,
    )


def _check_dst(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise DataError(f"{dst}: the output must be outside the source folder {src}")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"{dst}: exists and is not a folder; choose an empty or new folder")
    if dst.is_dir() and any(os.scandir(dst)):
        raise DataError(
            f"{dst}: folder is not empty; choose an empty or new folder (nothing written)"
        )


def _train_count(src: Path, n: int, train_ids: int | None, fraction: float | None) -> int:
    if train_ids is not None and fraction is not None:
        raise VitrinaError("give --train-ids or --train-fraction, not both")
    if fraction is None:
        fraction = 0.5
    if train_ids is not None:
        if not 1 <= train_ids <= n - 1:
            raise VitrinaError(
                f"--train-ids {train_ids}: {src} has {n} identities; use 1..{n - 1} so both "
                "train and test have people"
            )
        return train_ids
    if not 0.0 < fraction < 1.0:
        raise VitrinaError(f"--train-fraction {fraction}: must be between 0 and 1")
    return min(max(round(n * fraction), 1), n - 1)


def _write_market(
    dst: Path, plan: list[tuple[str, Path, str]], on_progress: Callable[[int, int], None] | None
) -> dict[str, Path]:
    for folder in MARKET_SPLITS.values():
        (dst / folder).mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for done, (folder, source, fname) in enumerate(plan, 1):
        with source.open("rb") as fin, atomic_writer(dst / folder / fname, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        files[f"{folder}/{fname}"] = source
        if on_progress is not None:
            on_progress(done, len(plan))
    return files
