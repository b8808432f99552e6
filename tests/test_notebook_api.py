"""The Python API takes photos as they come (paths, PIL images, numpy arrays, torch tensors,
one or a list) and behaves in a notebook: results show as HTML tables with thumbnails and
become pandas tables; plotting never switches matplotlib's backend."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COLORS
from vitrina.engine import Region, as_items
from vitrina.errors import VitrinaError


def colour(name: str, size: tuple[int, int] = (40, 40)) -> np.ndarray:
    """A plain (H, W, 3) uint8 photo of one of the toy run's colours."""
    return np.full((size[1], size[0], 3), COLORS[name], np.uint8)


def forms(a: np.ndarray, tmp_path: Path) -> dict[str, object]:
    """The same photo as every kind the API accepts."""
    path = tmp_path / "photo.png"
    Image.fromarray(a).save(path)
    t = torch.from_numpy(a).permute(2, 0, 1)
    return {
        "path": path,
        "str": str(path),
        "pil": Image.fromarray(a),
        "array": a,
        "float array": a.astype(np.float32) / 255.0,
        "tensor uint8": t,
        "tensor float": t.float() / 255.0,
    }


def images_in(page: str) -> list[Image.Image]:
    """The thumbnails a notebook page embeds, decoded."""
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


# ------------------------------------------------------------------------ one or many


def test_as_items_tells_one_photo_from_many() -> None:
    a = np.zeros((8, 6, 3), np.uint8)
    for one in ("a.jpg", Path("a.jpg"), Image.new("RGB", (4, 4)), a, a[..., 0],
                torch.zeros(3, 8, 6), Region("a.jpg", (0, 0, 2, 2))):  # fmt: skip
        items, single = as_items(one)
        assert single and len(items) == 1 and items[0] is one
    items, single = as_items(["a.jpg", a])
    assert not single and len(items) == 2
    items, single = as_items(np.zeros((5, 8, 6, 3), np.uint8))  # (N, H, W, C) batch
    assert not single and len(items) == 5 and items[0].shape == (8, 6, 3)
    items, single = as_items(torch.zeros(2, 3, 8, 6))  # (N, C, H, W) batch
    assert not single and [tuple(t.shape) for t in items] == [(3, 8, 6)] * 2
    assert as_items(p for p in ["a.jpg", "b.jpg"]) == (["a.jpg", "b.jpg"], False)
    with pytest.raises(TypeError, match="read_image_bytes"):
        as_items(b"\xff\xd8")
    with pytest.raises(TypeError, match="got int"):
        as_items(3)


# ------------------------------------------------------------------------ classifier


def test_predict_gives_the_same_answer_for_every_form_of_a_photo(
    toy_run: Path, tmp_path: Path
) -> None:
    import vitrina
    from vitrina.classify import Prediction, Predictions

    clf = vitrina.load(toy_run)
    photo = colour("green", (44, 36))
    ref = clf.predict(forms(photo, tmp_path)["path"])
    assert isinstance(ref, Prediction) and ref.label == "green"
    for kind, form in forms(photo, tmp_path).items():
        got = clf.predict(form)
        assert isinstance(got, Prediction), kind
        assert got.label == "green", kind
        np.testing.assert_allclose(got.confidence, ref.confidence, atol=1e-4, err_msg=kind)
    grey = clf.predict(photo.mean(axis=2).astype(np.uint8))  # (H, W) grey is a photo too
    assert grey.error is None and grey.label in COLORS

    many = clf.predict([colour("red"), tmp_path / "missing.jpg", Image.fromarray(colour("blue"))])
    assert isinstance(many, Predictions)
    assert [p.label for p in many] == ["red", None, "blue"]
    assert "missing.jpg: file not found" in (many[1].error or "")
    batch = clf.predict(np.stack([colour("red"), colour("blue")]))  # (N, H, W, C)
    assert [p.label for p in batch] == ["red", "blue"]
    tensors = clf.predict(
        torch.stack([torch.from_numpy(colour(c)).permute(2, 0, 1) for c in COLORS])
    )
    assert [p.label for p in tensors] == list(COLORS)


def test_predictions_show_thumbnails_and_become_a_table(toy_run: Path, tmp_path: Path) -> None:
    import vitrina

    clf = vitrina.load(toy_run)
    odd = tmp_path / "<b>odd & name<b>.png"  # user data in the page is escaped
    Image.fromarray(colour("red", (60, 30))).save(odd)
    preds = clf.predict([odd, colour("blue"), tmp_path / "gone.png"])
    page = preds._repr_html_()
    assert "&lt;b&gt;odd &amp; name&lt;b&gt;" in page and "<b>odd" not in page
    thumbs = images_in(page)
    assert len(thumbs) == 2  # the unreadable photo has no thumbnail, its error instead
    assert thumbs[0].size == (60, 30)  # small photos are not enlarged
    r, _, b = np.asarray(thumbs[1].convert("RGB")).reshape(-1, 3).mean(0)
    assert b > 150 and r < 90  # the blue one, as passed
    assert "gone.png: file not found" in page and "3 predictions (1 unreadable)" in page
    one = preds[0]._repr_html_()
    assert "prediction: red" in one and len(images_in(one)) == 1

    df = preds.to_pandas()
    assert list(df.columns) == ["photo", "label", "confidence", "top", "error"]
    assert df["label"].tolist()[:2] == ["red", "blue"] and df["label"].isna().tolist()[2]
    assert df.loc[0, "photo"] == str(odd) and df.loc[1, "photo"] == "<ndarray 40x40x3>"
    assert df.loc[0, "top"].startswith("red ")
    assert len(preds[1].to_pandas()) == 1


def test_to_pandas_without_pandas_names_the_extra(
    toy_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vitrina

    pred = vitrina.load(toy_run).predict(colour("red"))
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(VitrinaError, match=r"pip install 'vitrina\[notebook\]'") as info:
        pred.to_pandas()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ embed and search


def test_embedder_and_search_take_images_in_memory(toy_run: Path, tmp_path: Path) -> None:
    from vitrina.embed import Embedder
    from vitrina.search import Index, SearchResults

    data = tmp_path / "shop"
    for name in COLORS:
        (data / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(colour(name, (40 + i, 40))).save(data / name / f"{i}.png")
    emb = Embedder(str(toy_run), backend="eager", device="cpu")
    photo = colour("blue", (44, 36))
    by_path = emb.embed_paths([forms(photo, tmp_path)["path"]]).vectors
    for kind, form in forms(photo, tmp_path).items():
        got = emb.embed(form)
        assert got.vectors.shape == (1, emb.dim) and got.rows == [0], kind
        np.testing.assert_allclose(got.vectors, by_path, atol=1e-5, err_msg=kind)
    mixed = emb.embed([photo, tmp_path / "gone.png", Image.fromarray(photo)])
    assert mixed.rows == [0, 2] and len(mixed.errors) == 1

    idx = Index.build(data, tmp_path / "ix", model=str(toy_run), backend="eager", device="cpu")
    res = idx.search([Image.fromarray(photo), tmp_path / "gone.png", photo], k=2)
    assert isinstance(res, SearchResults) and len(res) == 3
    assert [Path(h.path).parent.name for h in res[0].hits] == ["blue", "blue"]
    assert res[1].error and not res[1].hits
    assert [h.id for h in res[2].hits] == [h.id for h in res[0].hits]
    vec = idx.search(by_path, k=2)  # a float (N, dim) array is vectors, as before
    assert [h.id for h in vec[0].hits] == [h.id for h in res[0].hits]
    single = idx.search(torch.from_numpy(photo).permute(2, 0, 1), k=1)  # one tensor
    assert len(single) == 1 and single[0].hits[0].label == res[0].hits[0].label

    page = res._repr_html_()
    # each readable query and its 2 hits; the file that is gone shows its error instead
    assert len(images_in(page)) == (1 + 2) + 0 + (1 + 2)
    assert "file not found" in page
    df = res.to_pandas()
    assert list(df.columns) == [
        "query", "rank", "id", "path", "label", "similarity", "distance", "error"
    ]  # fmt: skip
    assert len(df) == 2 + 1 + 2 and df["error"].notna().sum() == 1
    assert len(res[0].to_pandas()) == 2 and "2 hits" in res[0]._repr_html_()


# ------------------------------------------------------------------------ detection


def _red_boxes(rgb: np.ndarray):
    """A real detector of red regions: the bounding box of the red pixels."""
    from vitrina.detect import Detections

    ys, xs = np.nonzero((rgb[..., 0] > 150) & (rgb[..., 2] < 100))
    h, w = rgb.shape[:2]
    if not len(xs):
        return Detections.empty((w, h))
    box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    return Detections(box, [0.9], [0], (w, h))


def test_detect_takes_every_form_and_shows_the_boxes(tmp_path: Path) -> None:
    from vitrina.detect import ClassicDetector, DetectionResults, PhotoBoxes, detect

    det = ClassicDetector(
        "red", _red_boxes, ["red thing"], score_kind="test", default_min_score=0.5
    )
    photo = np.full((60, 80, 3), 240, np.uint8)
    photo[10:30, 20:50] = (220, 20, 20)
    for kind, form in forms(photo, tmp_path).items():
        got = detect(form, det)
        assert isinstance(got, PhotoBoxes) and got.error is None, kind
        np.testing.assert_allclose(got.detections.boxes, [[20, 10, 50, 30]], err_msg=kind)
    many = detect([photo, tmp_path / "gone.jpg", np.full((20, 20, 3), 255, np.uint8)], det)
    assert isinstance(many, DetectionResults) and [len(p.detections or []) for p in many] == [
        1,
        0,
        0,
    ]
    df = many.to_pandas()
    assert list(df.columns) == ["photo", "label", "score", "x1", "y1", "x2", "y2", "error"]
    assert df.loc[0, "label"] == "red thing" and df.loc[0, ["x1", "y1", "x2", "y2"]].tolist() == [
        20.0,
        10.0,
        50.0,
        30.0,
    ]
    assert len(df) == 3 and "file not found" in df.loc[1, "error"]
    page = many._repr_html_()
    assert "3 photos, 1 boxes" in page and len(images_in(page)) == 2
    drawn = np.asarray(images_in(many[0]._repr_html_())[0].convert("RGB")).astype(int)
    assert drawn.shape[:2] == (60, 80)  # the photo, with its box outline drawn on it
    assert np.abs(drawn - photo.astype(int)).max() > 100


# ------------------------------------------------------------------------ faces


def test_gallery_identifies_faces_in_memory_like_files(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    from vitrina.faces import Gallery, Identifications
    from vitrina.faces.enroll import enroll_photos

    astro = skdata.astronaut()
    people = tmp_path / "people" / "eileen"
    people.mkdir(parents=True)
    for i, (y, x) in enumerate([(30, 120), (20, 110)]):
        Image.fromarray(astro[y : y + 200, x : x + 200]).save(people / f"e{i}.png")
    enroll_photos(tmp_path / "g.gallery", folders=tmp_path / "people")
    g = Gallery(tmp_path / "g.gallery")
    crop = astro[25:225, 115:315]
    Image.fromarray(crop).save(tmp_path / "door.png")
    by_file = g.identify(tmp_path / "door.png")
    assert [i.name for i in by_file] == ["eileen"]
    for form in (crop, Image.fromarray(crop), torch.from_numpy(crop).permute(2, 0, 1)):
        got = g.identify(form)
        assert isinstance(got, Identifications) and [i.name for i in got] == ["eileen"]
        assert got[0].distance == pytest.approx(by_file[0].distance, abs=1e-4)
    both = g.identify([crop, np.full((200, 200, 3), 128, np.uint8)])  # the wall has no face
    assert [i.name for i in both] == ["eileen"]
    page = both._repr_html_()
    assert "1 faces, 1 recognised" in page and len(images_in(page)) == 1
    df = both.to_pandas()
    assert df.loc[0, "name"] == "eileen" and df.loc[0, "right"] > df.loc[0, "left"]


# ------------------------------------------------------------------------ plots


def test_plots_never_switch_matplotlibs_backend(tmp_path: Path) -> None:
    import matplotlib

    from vitrina.report import plot_confusion, plot_curves

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # what a user's session has chosen (svg: no display needed)
    try:
        plot_curves(
            [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}], tmp_path / "c.png"
        )
        plot_confusion(np.eye(2, dtype=int), ["a", "b"], tmp_path / "m.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert Image.open(tmp_path / "c.png").size[0] > 300
    assert Image.open(tmp_path / "m.png").size[0] > 100
