"""`vitrina explain ...` end to end on a small run (fast methods; the methods themselves are
tested in test_explain_attribution.py and test_explain_featureviz.py)."""

from __future__ import annotations

import re

from PIL import Image

from conftest import COLORS, make_image, one_line_error, run_cli, usage_error


def test_heat_maps_and_page_for_a_folder_with_a_bad_photo(toy_run, tmp_path, capsys):
    photos = tmp_path / "photos"
    make_image(photos / "red.png", COLORS["red"])
    make_image(photos / "blue.png", COLORS["blue"])
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "explain",
        str(toy_run),
        str(photos),
        "-m",
        "gradcam",
        "-m",
        "saliency",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "broken.jpg" in err  # recorded, and the batch went on
    names = sorted(p.name for p in (out / "overlays").iterdir())
    assert names == [
        "blue-gradcam.jpg",
        "blue-saliency.jpg",
        "blue.jpg",
        "red-gradcam.jpg",
        "red-saliency.jpg",
        "red.jpg",
    ]
    page = (out / "index.html").read_text()
    assert page.count("<img") == 6 and "broken.jpg" in page
    assert re.search(r"explained: <b>red</b>", page)
    with Image.open(out / "overlays" / "red-gradcam.jpg") as im:
        assert im.size == (40, 40)  # the photo's own size
    # A second run never overwrites: a new page next to the first.
    assert (
        run_cli(capsys, "explain", str(toy_run), str(photos / "red.png"), "--out", str(out))[0] == 0
    )
    assert (out / "index-1.html").exists()


def test_unknown_method_target_or_layer_is_one_line(toy_run, tmp_path, capsys):
    img = make_image(tmp_path / "red.png", COLORS["red"])
    code, _, err = run_cli(capsys, "explain", str(toy_run), str(img), "-m", "gradcam+")
    assert code == 2  # a method outside the registry is a usage error, listing the methods
    usage_error(err, "'gradcam+' is not one of", "'gradcam++'")
    code, _, err = run_cli(capsys, "explain", str(toy_run), str(img), "--target", "purple")
    assert code == 1
    one_line_error(err, "purple")
    code, _, err = run_cli(capsys, "explain", str(toy_run), str(img), "--layer", "nope")
    assert code == 1
    one_line_error(err, "nope")


def test_layers_neuron_and_dream(toy_run, tmp_path, capsys):
    img = make_image(tmp_path / "red.png", COLORS["red"])
    code, _, err = run_cli(
        capsys, "explain", "layers", str(toy_run), str(img), "--out", str(tmp_path / "L")
    )
    assert code == 0, err
    assert {p.name for p in (tmp_path / "L").iterdir()} == {"filters.png", "feature_maps.png"}
    code, out, err = run_cli(
        capsys,
        "explain",
        "neuron",
        str(toy_run),
        "--layer",
        "features.3",
        "--channel",
        "2",
        "--steps",
        "8",
        "--out",
        str(tmp_path / "n.png"),
    )
    assert code == 0, err
    assert "features.3 channel 2" in out and (tmp_path / "n.png").exists()
    code, _, err = run_cli(
        capsys,
        "explain",
        "neuron",
        str(toy_run),
        "--layer",
        "features.3",
        "--channel",
        "99",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "m.png"),
    )
    assert code == 1
    one_line_error(err, "99")
    code, _, err = run_cli(
        capsys,
        "explain",
        "dream",
        str(img),
        "--model",
        str(toy_run),
        "--layer",
        "features.3",
        "--octaves",
        "2",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "d.png"),
    )
    assert code == 0, err
    with Image.open(tmp_path / "d.png") as im:
        assert im.size == (40, 40)
