"""The engine's pipeline (decode threads, the model stage in its own thread), ``auto``'s check
on the running pipeline, and the fast JPEG path: each fast path against the plain one."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COLORS, make_image
from vitrina.classify.classifier import load
from vitrina.engine import BACKENDS, TOLERANCES, Engine, Logits, Region
from vitrina.errors import ImageReadError


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Files of the toy colours, a corrupt file, a missing one and a photo in memory."""
    root = tmp_path_factory.mktemp("mixed")
    items: list = []
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(7):
            items.append(make_image(root / f"{name}-{i}.png", rgb, seed=900 + ci * 10 + i))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items.insert(5, root / "broken.jpg")
    items.insert(11, root / "missing.png")
    items.insert(3, np.full((40, 40, 3), 200, np.uint8))
    return items


def _answers(results) -> list:
    return [
        (r.index, r.value.best[0] if r.ok else None, round(r.value.best[1], 5) if r.ok else None)
        for r in results
    ] + [(r.index, r.error) for r in results if not r.ok]


def test_threaded_pipeline_gives_the_inline_results(toy_run: Path, mixed: list) -> None:
    model = load(toy_run).model
    eng = Engine(model, backend="eager", device="cpu", batch_size=4)
    assert eng.decoding(Logits(), len(mixed)) == ("threads", eng.decoding(Logits(), 99)[1])
    inline = list(eng.run(Logits(), mixed, num_workers=0))
    threaded = list(eng.run(Logits(), mixed, num_workers=3))
    assert [r.index for r in threaded] == list(range(len(mixed)))
    assert _answers(threaded) == _answers(inline)
    assert sum(not r.ok for r in threaded) == 2


def test_pipeline_stops_cleanly_when_the_consumer_stops(toy_run: Path, mixed: list) -> None:
    eng = Engine(load(toy_run).model, backend="eager", device="cpu", batch_size=2)
    results = eng.run(Logits(), mixed, num_workers=2)
    next(results)
    results.close()  # the consumer stops after one photo
    time.sleep(0.1)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("vitrina-")]
    assert alive == []


def test_a_model_error_reaches_the_caller(toy_run: Path, mixed: list, monkeypatch) -> None:
    eng = Engine(load(toy_run).model, backend="eager", device="cpu", batch_size=4)

    def broken(x, output="logits"):
        raise RuntimeError("the runtime broke")

    monkeypatch.setattr(type(eng.backend), "__call__", lambda self, x, output="logits": broken(x))
    with pytest.raises(RuntimeError, match="the runtime broke"):
        list(eng.run(Logits(), mixed, num_workers=2))
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name.startswith("vitrina-")]


def test_regions_of_one_photo_decode_it_once(tmp_path: Path, monkeypatch) -> None:
    """Decode threads take the regions of one photo at the same time; it is read once."""
    import vitrina.engine.items as items
    from vitrina.models import create

    photo = make_image(tmp_path / "shelf.png", (200, 30, 30), size=120)
    calls = []
    real = items.read_image

    def counting(path, **kw):
        calls.append(path)
        time.sleep(0.05)  # long enough for the other threads to ask for the same photo
        return real(path, **kw)

    monkeypatch.setattr(items, "read_image", counting)
    model = create("tutorial_cnn", num_classes=3)
    boxes = [Region(photo, (i, i, i + 40, i + 40)) for i in range(0, 60, 5)]
    eng = Engine(model, backend="eager", device="cpu", batch_size=4)
    results = list(eng.run(Logits(), boxes, num_workers=4))
    assert all(r.ok for r in results) and len(calls) == 1


class _Slow:
    """Within tolerance (it is eager), but every call takes ``delay`` seconds."""

    delay = 0.0

    def __init__(self, model, device, threads=None, **options) -> None:
        self.inner = BACKENDS.get("eager")(model, device, threads)

    def __call__(self, x, output="logits"):
        time.sleep(self.delay)
        return self.inner(x, output)


class _Quick(_Slow):
    delay = 0.0


class _Sluggish(_Slow):
    delay = 0.15


def test_auto_rechecks_its_choice_on_the_running_pipeline(toy_run, mixed, monkeypatch) -> None:
    """Alone, "sluggish" looked faster (a misleading trial); in the pipeline it is slower, so
    auto switches once to "quick", records both measurements, and the next run under the
    same conditions reuses the decision without any trial."""
    import vitrina.engine.auto as auto

    class _Registry:
        def get(self, name):
            return {"quick": _Quick, "sluggish": _Sluggish}.get(name) or BACKENDS.get(name)

    monkeypatch.setattr(auto, "BACKENDS", _Registry())
    monkeypatch.setattr(auto, "auto_candidates", lambda *a: ["quick", "sluggish"])
    for name in ("quick", "sluggish"):
        monkeypatch.setitem(auto.TOLERANCES, name, TOLERANCES["onnx"])
    alone = {"eager": 10.0, "quick": 400.0, "sluggish": 500.0}

    def fake_time(backend, x, output):
        name = {_Quick: "quick", _Sluggish: "sluggish"}.get(type(backend), "eager")
        return backend(x, output=output), alone[name]

    monkeypatch.setattr(auto, "_time", fake_time)
    items = mixed * 3  # enough batches for the check (2 rounds x 2 candidates x 2 batches)
    eng = Engine(load(toy_run).model, backend="auto", device="cpu", batch_size=2)
    ref = _answers(Engine(load(toy_run).model, backend="eager").run(Logits(), items))
    assert _answers(eng.run(Logits(), items, num_workers=2)) == ref
    d = eng.backend.decisions["logits"]
    assert d["trials"]["sluggish"]["images_per_s"] > d["trials"]["quick"]["images_per_s"]
    pipe = d["pipeline"]
    assert pipe["images_per_s"]["quick"] > pipe["images_per_s"]["sluggish"]
    assert d["chosen"] == pipe["chosen"] == "quick" == eng.backend_name
    assert pipe["conditions"]["decode"] == "threads" and pipe["conditions"]["workers"] == 2
    assert "in the pipeline" in eng.describe()

    def no_trial(*a, **k):
        raise AssertionError("the cached decision should be used")

    monkeypatch.setattr(auto, "_time", no_trial)
    again = Engine(load(toy_run).model, backend="auto", device="cpu", batch_size=2)
    assert _answers(again.run(Logits(), items, num_workers=2)) == ref
    assert again.backend_name == "quick" and not again.backend._checks
    cache = json.loads(again.backend._cache_file("logits").read_text())
    assert "pipeline" in cache


# --------------------------------------------------------------------------- fast JPEG


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from skimage import data

    root = tmp_path_factory.mktemp("jpegs")
    photo = Image.fromarray(data.astronaut())  # 512x512
    big = photo.resize((1600, 1200), Image.BICUBIC)
    out = {
        "small": root / "small.jpg",
        "big": root / "big.jpg",
        "grey": root / "grey.jpg",
        "cmyk": root / "cmyk.jpg",
        "rotated": root / "rotated.jpg",
    }
    photo.save(out["small"], quality=90)
    big.save(out["big"], quality=90)
    photo.convert("L").save(out["grey"], quality=90)
    photo.convert("CMYK").save(out["cmyk"], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 270 to display
    big.crop((0, 0, 1600, 900)).save(out["rotated"], quality=90, exif=exif)
    return out


def _pillow_only(monkeypatch) -> None:
    import vitrina.io.images as images

    monkeypatch.setattr(images, "_simplejpeg", None)


def test_fast_jpeg_path_is_pillow_at_full_size(jpegs, monkeypatch) -> None:
    from vitrina.io import read_image

    fast = {k: read_image(p, mode="L" if k == "grey" else "RGB") for k, p in jpegs.items()}
    _pillow_only(monkeypatch)
    plain = {k: read_image(p, mode="L" if k == "grey" else "RGB") for k, p in jpegs.items()}
    for k in jpegs:
        assert fast[k].mode == plain[k].mode and fast[k].size == plain[k].size, k
        diff = np.abs(np.asarray(fast[k], np.int16) - np.asarray(plain[k], np.int16))
        assert diff.max() <= 1, k  # the same libjpeg-turbo decode (CMYK goes through Pillow)
    assert fast["rotated"].size == (900, 1600)  # EXIF orientation applied


def test_fast_jpeg_scales_in_the_dct_only_by_half_or_more(jpegs) -> None:
    from vitrina.io import read_image

    assert read_image(jpegs["small"], min_side=300).size == (512, 512)  # 1/2 would be < 300
    assert read_image(jpegs["small"], min_side=256).size == (256, 256)  # exactly 1/2
    assert read_image(jpegs["big"], min_side=400).size == (800, 600)  # 1/4 would be < 400
    assert read_image(jpegs["big"], min_side=256).size == (400, 300)
    assert read_image(jpegs["big"], min_side=150).size == (200, 150)
    assert (
        read_image(jpegs["rotated"], min_side=256).size[1]
        > read_image(jpegs["rotated"], min_side=256).size[0]
    )


def test_fast_jpeg_tensors_match_the_plain_transform(jpegs) -> None:
    """DCT-scaled decoding + the fast transform against Pillow + torchvision's transform."""
    from vitrina.data.transforms import eval_transform, plain_eval_transform
    from vitrina.engine.tasks import short_side
    from vitrina.models import create

    pre = create("tutorial_cnn", num_classes=3).preprocess
    from dataclasses import replace

    pre = replace(pre, input_size=(224, 224), crop_pct=0.875)
    from vitrina.io import read_image

    for key in ("big", "rotated"):
        fast = eval_transform(pre)(read_image(jpegs[key], min_side=short_side(pre)))
        with Image.open(jpegs[key]) as im:
            from PIL import ImageOps

            plain = plain_eval_transform(pre)(ImageOps.exif_transpose(im).convert("RGB"))
        grey_levels = (fast - plain).abs().mean() * 255 * max(pre.std)
        assert fast.shape == plain.shape and grey_levels < 2.0, (key, float(grey_levels))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_jpeg_stays_an_error(jpegs, tmp_path: Path, damage: str) -> None:
    from vitrina.io import read_image

    data = jpegs["big"].read_bytes()
    bad = tmp_path / f"{damage}.jpg"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(data[:700] + bytes(range(256)) * 40)
    for side in (None, 256):
        with pytest.raises(ImageReadError, match=f"{bad.name}: truncated or corrupt"):
            read_image(bad, min_side=side)


def test_normalisation_is_torchvision_s(jpegs) -> None:
    from torchvision.transforms import v2 as T

    from vitrina.data.transforms import ToNormalizedTensor

    im = Image.open(jpegs["small"]).convert("RGB")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = T.Compose(
        [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)]
    )(im)
    assert torch.allclose(ToNormalizedTensor(mean, std)(im), ref, atol=1e-5)
    grey = ToNormalizedTensor((0.5,), (0.5,))(im.convert("L"))
    assert grey.shape == (1, 512, 512) and float(grey.min()) >= -1 and float(grey.max()) <= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_nonfinite_outputs_are_bad_items_inline_and_overlapped(
    workers: int, tmp_path: Path
) -> None:
    """An item whose output is NaN (a classic model that cannot describe a flat photo) is a
    bad item naming the file, whether the batch ran inline or in the overlapped pipeline
    (decode threads + model stage); the other items keep their results, in order."""
    import vitrina

    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        flat = i % 2 == 1
        a = np.zeros((40, 40, 3), np.uint8) if flat else rng.integers(0, 255, (40, 40, 3))
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(a.astype(np.uint8)).save(paths[-1])
    model = vitrina.create("tutorial_cnn", num_classes=3)
    classify = model.classify

    def nan_for_flat(x: torch.Tensor) -> torch.Tensor:
        y = classify(x)
        flat = x.flatten(1).std(1) < 1e-6
        return torch.where(flat[:, None], torch.full_like(y, float("nan")), y)

    model.classify = nan_for_flat  # type: ignore[method-assign]
    eng = Engine(model, backend="eager", device="cpu", batch_size=8, num_workers=workers)
    assert eng.decoding(Logits(), len(paths))[0] == ("inline" if workers == 0 else "threads")
    results = list(eng.run(Logits(), paths))
    assert [r.index for r in results] == list(range(40))
    bad = [r for r in results if not r.ok]
    assert [r.index for r in bad] == list(range(1, 40, 2))
    assert bad[0].error.startswith(str(paths[1])) and "not finite" in bad[0].error
    assert all(np.isfinite(r.value.probabilities).all() for r in results if r.ok)
