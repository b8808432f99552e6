"""vitrina index / search / dedupe from the command line."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from PIL import Image

from conftest import COLORS, make_dataset, make_image
from conftest import run_cli as run

FAST = ["--backend", "eager", "--device", "cpu"]


def test_build_info_search_sheet_html(tmp_path: Path, toy_run: Path, capsys) -> None:
    data = make_dataset(tmp_path / "photos", per_class=3)
    ix = tmp_path / "photos.index"
    code, out, err = run(capsys, "index", "build", data, "--model", toy_run, "--out", ix, *FAST)
    assert code == 0, err
    assert "indexed 9 photos" in out and "exact search" in out

    code, out, _ = run(capsys, "index", "info", ix, "--json")
    info = json.loads(out)
    assert (
        code == 0 and info["count"] == 9 and info["metric"] == "cosine" and info["kind"] == "exact"
    )

    q1 = make_image(tmp_path / "q" / "blue-q.png", COLORS["blue"], seed=99)
    bad = tmp_path / "q" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    sheet, page = tmp_path / "out" / "results.png", tmp_path / "out" / "results.html"
    code, out, err = run(
        capsys, "search", ix, q1, bad, "-k", "3", "--json", "--sheet", sheet, "--html", page, *FAST
    )
    assert code == 1  # one query unreadable: reported, the other answered
    res = json.loads(out)["results"]
    assert [h["label"] for h in res[0]["hits"]] == ["blue"] * 3
    assert [h["rank"] for h in res[0]["hits"]] == [1, 2, 3]
    assert res[1]["error"] and "bad.jpg" in res[1]["error"] and res[1]["hits"] == []
    with Image.open(sheet) as im:
        assert im.width >= 4 * 128 and im.height >= 128  # query + 3 results
    text = page.read_text()
    assert "data:image/jpeg;base64," in text and text.count("<img") == 4
    assert "http://" not in text and "https://" not in text and "bad.jpg" in text

    code, out, err = run(capsys, "search", ix, q1, "-k", "2", *FAST)
    assert code == 0 and "blue" in out and "rank" in out

    code, _, err = run(capsys, "search", ix, q1, "--metric", "euclidean", *FAST)
    assert code == 1 and "built with the cosine metric" in err and "Traceback" not in err
    code, _, err = run(capsys, "search", ix, q1, "-k", "0")
    assert code == 1 and "at least 1" in err

    # add a folder, remove by path and by hash
    more = make_image(tmp_path / "more" / "red" / "extra.png", COLORS["red"], seed=31337)
    code, out, _ = run(capsys, "index", "add", ix, more.parent.parent, *FAST)
    assert code == 0 and "added 1 photos" in out
    code, out, _ = run(capsys, "index", "add", ix, more, *FAST)
    assert code == 0 and "added 0 photos" in out and "skipped 1 duplicates" in out
    # its content hash, not the search's top hit: the toy model embeds these red photos to
    # the same vector (distance 0.0), a tie the search may break either way
    sha = hashlib.sha256(more.read_bytes()).hexdigest()
    hit = json.loads(run(capsys, "search", ix, more, "-k", "3", "--json", *FAST)[1])
    assert sha in [h["sha256"] for h in hit["results"][0]["hits"]]
    code, out, _ = run(capsys, "index", "remove", ix, sha[:12], data / "red")
    assert code == 0 and "removed 4 photos" in out
    assert json.loads(run(capsys, "index", "info", ix, "--json")[1])["count"] == 6


def test_cli_bad_index_and_empty_folder(tmp_path: Path, toy_run: Path, capsys) -> None:
    code, _, err = run(capsys, "index", "info", tmp_path / "nope")
    assert code == 1 and "index folder not found" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        capsys, "index", "build", tmp_path / "empty", "--model", toy_run, "--out", tmp_path / "ix"
    )
    assert code == 1 and "no images found" in err
    code, _, err = run(capsys, "search", tmp_path / "empty", tmp_path / "q.jpg")
    assert code == 1 and "not a vitrina index" in err


def test_dedupe_groups_near_copies_and_moves_only_when_asked(
    tmp_path: Path, toy_run: Path, capsys
) -> None:
    photos = tmp_path / "photos"
    orig = make_image(photos / "red.png", COLORS["red"], size=64, seed=1)
    with Image.open(orig) as im:  # a slightly smaller, re-encoded copy
        im.convert("RGB").resize((58, 58), Image.Resampling.BILINEAR).save(
            photos / "red-copy.jpg", quality=80
        )
    (photos / "sub").mkdir()
    (photos / "sub" / "red-same.png").write_bytes(orig.read_bytes())  # exact copy
    make_image(photos / "green.png", COLORS["green"], size=64, seed=2)
    make_image(photos / "blue.png", COLORS["blue"], size=64, seed=3)
    before = sorted(p.name for p in photos.rglob("*") if p.is_file())

    csv_out, sheet = tmp_path / "dupes.csv", tmp_path / "dupes.png"
    code, out, err = run(
        capsys, "dedupe", photos, "--model", toy_run, "--out", csv_out, "--sheet", sheet, *FAST
    )
    assert code == 0, err
    rows = list(csv.DictReader(csv_out.open()))
    assert {r["group"] for r in rows} == {"1"}
    assert sorted(Path(r["path"]).name for r in rows) == ["red-copy.jpg", "red-same.png", "red.png"]
    first = rows[0]
    assert first["kept"] == "1" and Path(first["path"]).suffix == ".png"  # most pixels
    assert all(float(r["similarity"]) >= 0.88 for r in rows)
    assert sheet.exists() and "nothing moved" in out
    assert sorted(p.name for p in photos.rglob("*") if p.is_file()) == before  # untouched

    dest = tmp_path / "dupes"
    code, out, err = run(
        capsys, "dedupe", photos, "--model", toy_run, "--move-to", dest, "--json", *FAST
    )
    assert code == 0, err
    moved = sorted(p.name for p in dest.iterdir())
    assert len(moved) == 2
    left = sorted(p.name for p in photos.rglob("*") if p.is_file())
    assert len(left) == 3 and "green.png" in left and "blue.png" in left


def test_search_explain_writes_why_each_result_matches(tmp_path: Path, toy_run: Path, capsys):
    data = make_dataset(tmp_path / "photos", per_class=2)
    ix = tmp_path / "photos.index"
    assert run(capsys, "index", "build", data, "--model", toy_run, "--out", ix, *FAST)[0] == 0
    q = make_image(tmp_path / "q" / "red-q.png", COLORS["red"], seed=7)
    why = tmp_path / "why"
    code, _, err = run(
        capsys, "search", ix, q, "-k", "3", "--explain", why, "--explain-top", "2", *FAST
    )
    assert code == 0, err
    pairs = sorted(p.name for p in (why / "red-q").iterdir())
    assert len(pairs) == 2 and pairs[0].startswith("rank-01-") and pairs[1].startswith("rank-02-")
    with Image.open(why / "red-q" / pairs[0]) as im:
        assert im.width > im.height  # query and result side by side
    # A second run keeps the first files and adds new ones.
    assert run(capsys, "search", ix, q, "-k", "1", "--explain", why, *FAST)[0] == 0
    assert len(list((why / "red-q").iterdir())) == 3


def test_index_upgrade_and_compact_from_the_command_line(tmp_path: Path, capsys) -> None:
    """An index from before issue 17 (format 1) is upgraded in place and stays searchable;
    an HNSW removal's tombstone is dropped by `index compact`."""
    import shutil

    import numpy as np

    from vitrina.search import Index

    ix = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "index_format1", ix)
    _, vecs = Index.open(ix).vectors()
    code, out, _ = run(capsys, "index", "upgrade", ix)
    assert code == 0 and "upgraded to format 2" in out
    code, out, _ = run(capsys, "index", "upgrade", ix, "--json")
    assert code == 0 and json.loads(out)["upgraded"] is False
    code, out, _ = run(capsys, "index", "info", ix)
    assert code == 0 and "format" in out and "2: vectors in vectors.faiss" in out
    code, out, _ = run(capsys, "index", "compact", ix)
    assert code == 0 and "nothing to compact" in out

    idx = Index.open(ix)
    assert idx.kind == "hnsw"
    first = idx.items()[0]["path"]
    idx.remove([first])
    assert idx.info()["removed_pending_compaction"] == 1
    code, out, _ = run(capsys, "index", "compact", ix, "--json")
    assert code == 0 and json.loads(out)["tombstones_dropped"] == 1
    after = Index.open(ix)
    assert after.info()["removed_pending_compaction"] == 0 and len(after) == len(vecs) - 1
    hits = after.search(np.asarray(vecs[1:2]), k=1)[0].hits
    assert hits and hits[0].path != first
