"""What `vitrina embed`, `evaluate-retrieval`, `evaluate-reid` and `plot-embeddings` call,
tested as API: embed_files / describe_layers (vitrina.embed.files), the report writers, and
the embedding map's sampling, starting points and drawing (vitrina.embed.projection)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_dataset, make_image
from test_train_embedding import make_identities
from vitrina.embed.files import describe_layers, embed_files
from vitrina.embed.output import read_vectors
from vitrina.embed.projection import plot_embeddings, sample_labelled_images, starting_point
from vitrina.errors import DataError, VitrinaError

FAST = {"backend": "eager", "device": "cpu"}


# ------------------------------------------------------------------------------ embed_files


def test_embed_files_writes_vectors_and_leaves_out_the_unreadable(
    toy_run: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    for i, rgb in enumerate(COLORS.values()):
        make_image(photos / "sub" / f"{i}.png", rgb, seed=i)
    top = make_image(photos / "top.png", COLORS["red"], seed=9)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    out = tmp_path / "v.npy"
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    make_image(tmp_path / "empty" / "deeper" / "x.png", COLORS["red"])
    with pytest.raises(VitrinaError, match=r"no images in .*--recursive descends"):
        embed_files(str(toy_run), [tmp_path / "empty"], out, **FAST)
    run = embed_files(str(toy_run), [photos], out, recursive=True, **FAST)
    assert run.files == [out, out.with_suffix(".csv")]
    vectors, paths = read_vectors(out)
    assert vectors.shape == (4, run.embedder.dim)
    assert sorted(Path(p).name for p in paths) == ["0.png", "1.png", "2.png", "top.png"]
    assert [Path(p) for p in paths] == run.result.paths  # the csv rows are the vectors' rows
    assert [p.name for p, _ in run.result.errors] == ["broken.jpg"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    s = run.summary()
    assert (s["vectors"], s["unreadable"], s["dim"]) == (4, 1, run.embedder.dim)
    assert s["files"] == [str(out), str(out.with_suffix(".csv"))]
    # without --recursive only the folder's own photos; files as given
    flat = embed_files(str(toy_run), [photos, top], tmp_path / "f.npy", **FAST)
    assert [p.name for p in flat.result.paths] == ["top.png", "top.png"]


def test_embed_files_refuses_existing_output_before_loading_the_model(tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    out.with_suffix(".csv").write_text("mine")
    photo = make_image(tmp_path / "p.png", COLORS["red"])
    with pytest.raises(VitrinaError, match=r"v\.csv: file exists"):
        embed_files("no-such-model-at-all", [photo], out)  # the model is never looked up
    assert out.with_suffix(".csv").read_text() == "mine"
    with pytest.raises(VitrinaError, match="no images given"):
        embed_files("no-such-model-at-all", [], tmp_path / "w.npy")
    with pytest.raises(DataError, match=r"nope\.png: no such file or folder"):
        embed_files("no-such-model-at-all", [tmp_path / "nope.png"], tmp_path / "w.npy")


def test_embed_files_with_nothing_readable_writes_nothing(toy_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(VitrinaError, match="none of the 1 images could be read"):
        embed_files(str(toy_run), [bad], tmp_path / "v.parquet", **FAST)
    assert not (tmp_path / "v.parquet").exists()


def test_describe_layers_lists_shapes(toy_run: Path) -> None:
    table = describe_layers(str(toy_run))
    assert table.arch == "tutorial_cnn"
    assert "features" in table.shapes and table.shapes["features"][0] > 0
    assert table.total >= len(table.shapes)


# ------------------------------------------------------------------------------ report writers


def test_evaluate_retrieval_writes_its_report_and_refuses_to_overwrite(
    toy_run: Path, tmp_path: Path
) -> None:
    from vitrina.embed.evaluate import REPORT_FILES, evaluate_retrieval

    data = make_dataset(tmp_path / "data", per_class=3)
    out = tmp_path / "eval"
    rep = evaluate_retrieval(data, str(toy_run), out_dir=out, **FAST)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    assert json.loads((out / "report.json").read_text())["mAP"] == pytest.approx(rep.mAP)
    assert (out / "retrieval.png").read_bytes()[:4] == b"\x89PNG"
    before = (out / "report.json").read_bytes()
    with pytest.raises(VitrinaError, match=r"report\.json: file exists"):
        evaluate_retrieval(data, str(toy_run), out_dir=out, **FAST)
    assert (out / "report.json").read_bytes() == before


def test_evaluate_reid_writes_report_curve_and_sheet(toy_run: Path, tmp_path: Path) -> None:
    from vitrina.data.identities import to_market
    from vitrina.embed.reid import REPORT_FILES, evaluate_reid

    market = tmp_path / "market"
    to_market(make_identities(tmp_path / "people", n_ids=6, per_id=4), market, train_ids=2)
    out = tmp_path / "eval"
    ev = evaluate_reid(market, str(toy_run), rerank=True, k1=4, k2=2, out_dir=out, **FAST)
    assert ev.files == [out / name for name in REPORT_FILES]
    assert list(ev.reports) == ["plain", "re-ranked"]
    doc = json.loads((out / "report.json").read_text())
    assert set(doc) == {"plain", "re-ranked"}
    assert doc["plain"]["mAP"] == pytest.approx(ev.plain.mAP)
    for name in ("cmc.png", "ranked.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(VitrinaError, match=r"report\.json: file exists"):
        evaluate_reid(market, str(toy_run), out_dir=out, **FAST)
    plain = evaluate_reid(market, str(toy_run), metric="cosine", **FAST)
    assert list(plain.reports) == ["cosine"] and plain.files == []


# ------------------------------------------------------------------------------ the map


def test_sample_labelled_images_is_seeded_and_bounded(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_class=5)
    everything = sample_labelled_images(data)
    assert everything.names == ["blue", "green", "red"] and len(everything.paths) == 15
    assert all(everything.names[lab] in p.parent.name for p, lab in zip(
        everything.paths, everything.labels, strict=True))  # fmt: skip
    few = sample_labelled_images(data, max_labels=2, max_images=7, seed=3)
    assert len(few.names) == 2 and len(few.paths) == 7 and set(few.labels) <= {0, 1}
    assert all(
        few.names[lab] == p.parent.name for p, lab in zip(few.paths, few.labels, strict=True)
    )
    assert sample_labelled_images(data, max_labels=2, max_images=7, seed=3) == few
    assert sample_labelled_images(data, max_labels=2, max_images=7, seed=4) != few
    with pytest.raises(VitrinaError, match="at least 1"):
        sample_labelled_images(data, max_images=0)


def test_sample_labelled_images_of_a_market_folder_draws_the_test_identities(
    tmp_path: Path,
) -> None:
    from vitrina.data.identities import scan_identities, to_market

    market = tmp_path / "market"
    to_market(make_identities(tmp_path / "people", n_ids=6, per_id=4), market, train_ids=2)
    s = sample_labelled_images(market)
    ids = scan_identities(market)
    expected = {im.path for im in ids.query + ids.gallery if im.pid > 0}
    assert set(s.paths) == expected and len(s.names) == 4
    assert all(len(n) == 4 and n.isdigit() for n in s.names)


def test_starting_point_of_runs(toy_run: Path, tmp_path: Path) -> None:
    assert starting_point(str(toy_run)) is None  # trained from random weights
    assert starting_point("efficientnet_lite0") is None  # not a run folder

    def copy_with_weights(weights: str) -> Path:
        run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(toy_run, run)
        meta = json.loads((run / "vitrina.json").read_text())
        meta["config"]["weights"] = weights
        (run / "vitrina.json").write_text(json.dumps(meta))
        return run

    assert starting_point(copy_with_weights("imagenet")) == "tutorial_cnn"
    assert starting_point(copy_with_weights(str(toy_run))) == str(toy_run)
    assert starting_point(copy_with_weights("weights.safetensors")) is None


def test_plot_embeddings_draws_a_panel_per_model_and_never_overwrites(
    toy_run: Path, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", per_class=4)
    (data / "red" / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "map.png"
    seen = []
    drawn = plot_embeddings(
        data,
        [str(toy_run), str(toy_run)],
        out,
        max_images=100,
        on_progress=lambda d, n: seen.append((d, n)),
        **FAST,
    )
    assert drawn.path == out and out.read_bytes()[:4] == b"\x89PNG"
    assert [p.title for p in drawn.panels] == ["run", "run"]  # random init: no "before" panel
    assert drawn.images == 13 and drawn.names == ["blue", "green", "red"]
    assert all(p.mAP is not None and 0 <= p.mAP <= 1 for p in drawn.panels)
    assert [Path(p).name for p, _ in drawn.errors] == ["broken.jpg"]  # listed once
    assert seen[-1] == (26, 26) and max(d for d, _ in seen) == 26  # counts over both panels
    with pytest.raises(VitrinaError, match=r"map\.png: file exists"):
        plot_embeddings(data, [str(toy_run)], out, **FAST)
    with pytest.raises(VitrinaError, match=r"tnse.*tsne"):
        plot_embeddings(data, [str(toy_run)], tmp_path / "x.png", method="tnse", **FAST)
