"""Identity datasets: Market-1501 names and layout, folder-per-identity, to-market, P x K."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image, one_line_error, run_cli
from vitrina.data import (
    MarketName,
    PKSampler,
    parse_market_name,
    pk_batches,
    scan_identities,
    to_market,
)
from vitrina.errors import DataError, VitrinaError


def people(root: Path, sizes: dict[str, int]) -> Path:
    """``root/<name>/<i>.png`` with ``sizes[name]`` tiny images each (every file differs)."""
    for pi, (name, n) in enumerate(sizes.items()):
        for i in range(n):
            ext = ".png" if i % 2 else ".jpg"
            make_image(
                root / name / f"img{i}{ext}", (40 * pi % 255, 90, 160), size=8, seed=pi * 100 + i
            )
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("0001_c1s1_001051_00.jpg", MarketName(1, 1, 1, 1051, 0)),
        ("1501_c6s4_001877_02.png", MarketName(1501, 6, 4, 1877, 2)),
        ("-1_c3s2_000_00.jpg", MarketName(-1, 3, 2, 0, 0)),  # junk
        ("0000_c2s1_000126_01.PGM", MarketName(0, 2, 1, 126, 1)),  # distractor, any image suffix
    ],
)
def test_parse_market_name(name: str, want: MarketName) -> None:
    assert parse_market_name(name) == want


@pytest.mark.parametrize(
    "name", ["0001_c1_001051_00.jpg", "x001_c1s1_001051_00.jpg", "0001_c1s1_001051_00.txt", "a.jpg"]
)
def test_parse_market_name_refuses_malformed(name: str) -> None:
    with pytest.raises(DataError, match="PPPP_cCsS_FFFFFF_NN"):
        parse_market_name(name)


# --------------------------------------------------------------------------- scanning


def market(root: Path) -> Path:
    names = {
        "bounding_box_train": [
            "0007_c1s1_000001_00.jpg",
            "0007_c2s1_000002_00.jpg",
            "0003_c1s1_000003_00.png",
            "-1_c1s1_000004_00.jpg",  # junk in train: skipped and counted
            "0000_c1s1_000005_00.jpg",  # distractor in train: skipped and counted
        ],
        "query": ["0010_c1s1_000010_00.jpg"],
        "bounding_box_test": [
            "0010_c2s1_000011_00.jpg",
            "0000_c3s1_000012_00.jpg",
            "-1_c1s1_000013_00.jpg",
        ],
    }
    for i, (folder, files) in enumerate((f, n) for f, ns in names.items() for n in ns):
        make_image(root / folder / files, (100, 100, 100), size=8, seed=i)
    (root / "query" / ".DS_Store").write_bytes(b"x")
    (root / "query" / "readme.txt").write_text("hi")
    return root


def test_scan_market(tmp_path: Path) -> None:
    s = scan_identities(market(tmp_path / "m"))
    assert s.layout == "market1501"
    assert s.names == ["0003", "0007"]  # train pids relabelled 0..n-1 in pid order
    assert sorted((im.pid, im.camid, im.label) for im in s.train) == [
        (3, 1, 0),
        (7, 1, 1),
        (7, 2, 1),
    ]
    assert (s.skipped_junk, s.skipped_distractors) == (1, 1)
    assert [(q.pid, q.camid, q.label) for q in s.query] == [(10, 1, -1)]
    # the gallery keeps junk and distractors with their pid for the evaluator
    assert sorted((g.pid, g.camid) for g in s.gallery) == [(-1, 1), (0, 3), (10, 2)]
    assert s.skipped_hidden == 1 and [p.name for p in s.skipped_non_image] == ["readme.txt"]


def test_scan_market_malformed_names_one_error(tmp_path: Path) -> None:
    root = market(tmp_path / "m")
    for n in ("bad1.jpg", "bad2.jpg", "bad3.jpg", "bad4.jpg"):
        make_image(root / "bounding_box_test" / n, (0, 0, 0), size=8)
    with pytest.raises(DataError) as e:
        scan_identities(root)
    msg = str(e.value)
    assert "bounding_box_test" in msg and "4 file names" in msg and "bad1.jpg" in msg
    assert "PPPP_cCsS_FFFFFF_NN" in msg and "\n" not in msg


def test_scan_market_missing_split_is_named(tmp_path: Path) -> None:
    root = market(tmp_path / "m")
    for p in (root / "query").iterdir():
        p.unlink()
    (root / "query").rmdir()
    with pytest.raises(DataError, match="lacks query/"):
        scan_identities(root)


def test_scan_folders(tmp_path: Path) -> None:
    root = people(tmp_path / "p", {"bob": 2, "alice": 3})
    (root / "alice" / ".hidden.jpg").write_bytes(b"x")
    s = scan_identities(root)
    assert s.layout == "folders" and s.names == ["alice", "bob"]
    assert Counter((im.label, im.pid, im.camid) for im in s.train) == {(0, 1, -1): 3, (1, 2, -1): 2}
    assert s.query == [] and s.gallery == [] and s.skipped_hidden == 1


def test_scan_folders_needs_two_identities(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2"):
        scan_identities(people(tmp_path / "p", {"alice": 3}))


# --------------------------------------------------------------------------- to_market


SIZES = {"ann": 4, "ben": 3, "cat": 5, "dan": 1, "eve": 2, "fox": 6, "gus": 3, "hal": 1}


def test_to_market_round_trip(tmp_path: Path) -> None:
    src = people(tmp_path / "src", SIZES)
    before = snapshot(src)
    seen: list[tuple[int, int]] = []
    r = to_market(
        src,
        tmp_path / "dst",
        train_ids=4,
        cameras=3,
        seed=1,
        on_progress=lambda d, t: seen.append((d, t)),
    )
    assert snapshot(src) == before  # the source is only read
    assert (r.skipped_train_singletons, r.gallery_only_singletons) == (1, 1)  # seed 1: one each

    s = scan_identities(tmp_path / "dst")
    assert s.layout == "market1501"
    meta = json.loads((tmp_path / "dst" / "identities.json").read_text())
    assert meta["identities"] == {str(i + 1): n for i, n in enumerate(sorted(SIZES))}
    name_of = {int(k): v for k, v in meta["identities"].items()}

    train_pids = {im.pid for im in s.train}
    test_pids = {im.pid for im in s.query + s.gallery}
    assert not train_pids & test_pids  # split by identity, never by image
    written = {name_of[p] for p in train_pids | test_pids}
    skipped_train = {n for n in SIZES if n not in written}  # train singletons are skipped
    assert all(SIZES[n] == 1 for n in skipped_train)
    assert r.skipped_train_singletons == len(skipped_train)
    assert len(train_pids) + len(skipped_train) == 4
    assert (r.train_ids, r.train_images) == (len(train_pids), len(s.train))
    assert (r.query_images, r.gallery_images) == (len(s.query), len(s.gallery))

    # each test identity with n >= 2 images has every image of the query camera as a query
    # (ceil(n / 3) of them with 3 cameras), on camera 1, with gallery matches from other
    # cameras only; a single-image test identity is in the gallery only
    for pid in {q.pid for q in s.query}:
        n = SIZES[name_of[pid]]
        assert sum(q.pid == pid for q in s.query) == min(n - 1, -(-n // 3))
    assert any(sum(q.pid == p for q in s.query) > 1 for p in test_pids)  # fox: 6 -> 2 queries
    for q in s.query:
        assert q.camid == 1
        assert any(g.pid == q.pid and g.camid != q.camid for g in s.gallery)
    assert all(g.camid != 1 for g in s.gallery)
    for pid in test_pids - {q.pid for q in s.query}:
        assert SIZES[name_of[pid]] == 1
    assert r.gallery_only_singletons == len(test_pids - {q.pid for q in s.query})
    assert all(1 <= im.camid <= 3 for im in s.train + s.query + s.gallery)

    # every file is a byte copy of its recorded source, keeping the extension
    assert len(meta["files"]) == len(s.train) + len(s.query) + len(s.gallery)
    for rel, source in meta["files"].items():
        out, origin = tmp_path / "dst" / rel, src / source
        assert out.read_bytes() == origin.read_bytes() and out.suffix == origin.suffix
        assert name_of[parse_market_name(out).pid] == Path(source).parts[0]
    assert seen[-1] == (len(meta["files"]),) * 2


def test_to_market_queries_per_id(tmp_path: Path) -> None:
    src = people(tmp_path / "src", {"a": 6, "b": 6, "c": 2, "d": 5, "e": 1})
    to_market(src, tmp_path / "dst", train_ids=1, cameras=3, queries_per_id=3, seed=0)
    s = scan_identities(tmp_path / "dst")
    sizes = {}
    for im in s.query + s.gallery:
        sizes[im.pid] = sizes.get(im.pid, 0) + 1
    for pid, n in sizes.items():
        queries = [q for q in s.query if q.pid == pid]
        assert len(queries) == (min(3, n - 1) if n > 1 else 0)  # never every image
        assert all(q.camid == 1 for q in queries)
    assert {g.camid for g in s.gallery} == {2, 3}
    with pytest.raises(VitrinaError, match="--queries-per-id 0"):
        to_market(src, tmp_path / "new", queries_per_id=0)
    assert not (tmp_path / "new").exists()


def test_to_market_is_deterministic(tmp_path: Path) -> None:
    src = people(tmp_path / "src", SIZES)
    a = to_market(src, tmp_path / "a", seed=3)
    b = to_market(src, tmp_path / "b", seed=3)
    assert a.to_dict() | {"dst": ""} == b.to_dict() | {"dst": ""}
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    to_market(src, tmp_path / "c", seed=4)
    assert snapshot(tmp_path / "a") != snapshot(tmp_path / "c")


def test_to_market_refuses_non_empty_dst(tmp_path: Path) -> None:
    src = people(tmp_path / "src", SIZES)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        to_market(src, dst)
    assert snapshot(dst) == {"keep.txt": b"mine"}
    with pytest.raises(DataError, match="outside the source"):
        to_market(src, src / "market")
    with pytest.raises(VitrinaError, match="--train-ids 8"):
        to_market(src, tmp_path / "new", train_ids=8)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_to_market(capsys, tmp_path: Path) -> None:
    src = people(tmp_path / "src", SIZES)
    code, o, e = run_cli(
        capsys, "data", "to-market", src, tmp_path / "dst", "--train-fraction", "0.5"
    )
    assert code == 0, e
    assert "query" in o and "bounding_box_train" in o
    assert "single image" in o
    assert (tmp_path / "dst" / "identities.json").is_file()


def test_cli_to_market_bad_input(capsys, tmp_path: Path) -> None:
    code, _, e = run_cli(capsys, "data", "to-market", tmp_path / "nope", tmp_path / "dst")
    assert code == 1
    one_line_error(e, "nope", "not found")
    src = people(tmp_path / "src", SIZES)
    code, _, e = run_cli(
        capsys,
        "data",
        "to-market",
        src,
        tmp_path / "d",
        "--train-ids",
        "2",
        "--train-fraction",
        "0.3",
    )
    assert code == 1
    one_line_error(e, "not both")


# --------------------------------------------------------------------------- P x K


def test_pk_batches_structure() -> None:
    labels = [0] * 7 + [1] * 2 + [2] * 5 + [3] * 3 + [4] * 1 + [5] * 6
    y = np.array(labels)
    s = PKSampler(labels, p=3, k=4, seed=0)
    assert s.dropped_singletons == 1
    batches = list(s)
    assert len(batches) == len(s) == (len(labels) - 1) // 12
    for b in batches:
        c = Counter(y[b].tolist())
        assert len(b) == 12 and len(c) == 3 and set(c.values()) == {4}
        assert 4 not in c  # the singleton never appears
        rows = y[b].reshape(3, 4)  # grouped: identity after identity
        assert (rows == rows[:, :1]).all()
    # an identity with >= k images gives k distinct ones
    for b in batches:
        for g in range(0, 12, 4):
            chunk = b[g : g + 4]
            if np.sum(y == y[chunk[0]]) >= 4:
                assert len(set(chunk)) == 4
    # every kept identity shows up over a few epochs; with < k images it repeats
    many = [i for e in range(5) for b in pk_batches(labels, 3, 4, seed=0, epoch=e) for i in b]
    assert set(y[many].tolist()) == {0, 1, 2, 3, 5}


def test_pk_sampler_is_seeded_per_epoch() -> None:
    labels = np.repeat(np.arange(10), 4)
    s = PKSampler(labels, p=2, k=2, seed=7)
    e0 = list(s.set_epoch(0))
    assert list(s.set_epoch(0)) == e0 == pk_batches(labels, 2, 2, seed=7, epoch=0)
    assert list(s.set_epoch(1)) != e0
    assert list(PKSampler(labels, p=2, k=2, seed=8)) != e0
    assert len(s) == 10


def test_pk_sampler_too_few_identities() -> None:
    with pytest.raises(DataError) as e:
        PKSampler([0, 0, 1, 1, 2, 3], p=3, k=2)
    msg = str(e.value)
    assert "only 2 identities" in msg and "P must be <= 2" in msg and "2 with a single image" in msg
    assert "--p" in msg


def test_to_market_takes_train_ids_or_a_fraction_not_both(tmp_path: Path) -> None:
    src = people(tmp_path / "src", SIZES)
    with pytest.raises(VitrinaError, match="not both"):
        to_market(src, tmp_path / "new", train_ids=2, train_fraction=0.5)
    assert not (tmp_path / "new").exists()
