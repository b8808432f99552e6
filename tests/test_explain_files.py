"""vitrina.explain.files: the explanations `vitrina explain layers / neuron / dream` write,
for a model given by name -- and explain_photos given a model name and a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import COLORS, make_image
from vitrina.errors import VitrinaError
from vitrina.explain.files import load_model, write_dream, write_layers, write_neuron


def test_load_model_by_name_is_in_eval_mode_and_says_where_it_comes_from(toy_run: Path) -> None:
    net, origin = load_model(str(toy_run))
    assert not net.training and net.arch == "tutorial_cnn" and origin
    assert load_model(net)[0] is net


def test_write_layers_refuses_to_overwrite_before_loading(toy_run: Path, tmp_path: Path) -> None:
    photo = make_image(tmp_path / "red.png", COLORS["red"])
    files = write_layers(str(toy_run), photo, tmp_path / "L", top=4)
    assert sorted(files) == ["feature_maps", "filters"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in files.values())
    with pytest.raises(VitrinaError, match=r"filters\.png: file exists"):
        write_layers("no-such-model", photo, tmp_path / "L")


def test_write_neuron_for_a_channel_or_a_class_by_name(toy_run: Path, tmp_path: Path) -> None:
    seen = []
    res = write_neuron(
        str(toy_run),
        tmp_path / "n.png",
        layer="features.3",
        channel=2,
        steps=4,
        on_progress=lambda d, n: seen.append((d, n)),
    )
    assert (res.layer, res.channel, res.class_index) == ("features.3", 2, None)
    assert seen[-1] == (4, 4) and len(res.objective_curve) == 4
    with Image.open(tmp_path / "n.png") as im:
        assert im.size == res.image.size
    net, _ = load_model(str(toy_run))
    by_name = write_neuron(net, tmp_path / "c.png", target="green", steps=2)
    assert by_name.class_index == list(net.class_names).index("green")
    assert write_neuron(net, tmp_path / "i.png", target="2", steps=1).class_index == 2
    with pytest.raises(VitrinaError, match="purple"):
        write_neuron(net, tmp_path / "p.png", target="purple", steps=1)
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(VitrinaError, match=r"n\.png: file exists"):
        write_neuron("no-such-model", tmp_path / "n.png")


def test_write_dream_keeps_the_photos_size(toy_run: Path, tmp_path: Path) -> None:
    photo = make_image(tmp_path / "red.png", COLORS["red"], size=48)
    out = write_dream(
        str(toy_run), photo, tmp_path / "d.png", layer="features.3", octaves=2, steps=2
    )
    with Image.open(out) as im:
        assert im.size == (48, 48)
    with pytest.raises(VitrinaError, match=r"d\.png: file exists"):
        write_dream("no-such-model", photo, out, layer="features.3")


def test_explain_photos_takes_a_model_name_and_folders(toy_run: Path, tmp_path: Path) -> None:
    from vitrina.explain import explain_photos

    photos = tmp_path / "photos"
    make_image(photos / "a" / "red.png", COLORS["red"])
    make_image(photos / "blue.png", COLORS["blue"])
    (photos / "broken.jpg").write_bytes(b"nope")
    seen = []
    res = explain_photos(
        str(toy_run), [photos], tmp_path / "out", on_progress=lambda d, n: seen.append((d, n))
    )
    assert res.explained == 2 and len(res.unreadable) == 1 and seen[-1] == (3, 3)
    assert "tutorial_cnn (" in res.page.read_text()  # the title says which weights
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitrinaError, match="no photos given"):
        explain_photos(str(toy_run), [tmp_path / "empty"], tmp_path / "o")
