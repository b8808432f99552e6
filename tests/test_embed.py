"""vitrina.embed: default and named-layer embeddings, pooling, fingerprints, backends, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COLORS, make_image, run_cli
from vitrina.data.transforms import eval_transform
from vitrina.embed import Embedder, EmbeddingSpec, embed_paths, list_layers, pool_features
from vitrina.errors import VitrinaError
from vitrina.runs import load_model

FAST = dict(backend="eager", device="cpu", num_workers=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("embimgs")
    return [
        make_image(d / f"{name}-{i}.png", rgb, seed=100 * ci + i)
        for ci, (name, rgb) in enumerate(COLORS.items())
        for i in range(3)
    ]


@pytest.fixture(scope="module")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as ``toy_run``, other (random) weights."""
    from vitrina.models import create
    from vitrina.models.small import TUTORIAL_CNN_PREPROCESS
    from vitrina.runs import RunInfo, save_run

    torch.manual_seed(123)
    m = create("tutorial_cnn", num_classes=3)
    info = RunInfo(
        arch="tutorial_cnn", classes=["blue", "green", "red"], preprocess=TUTORIAL_CNN_PREPROCESS
    )
    return save_run(tmp_path_factory.mktemp("other") / "run", m, info)


def _batch(run: Path, paths: list[Path]) -> tuple[torch.nn.Module, torch.Tensor]:
    model = load_model(run).eval()
    tf = eval_transform(model.preprocess)
    return model, torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])


def test_default_spec_is_model_embed_normalized(toy_run: Path, images: list[Path]) -> None:
    e = Embedder(toy_run, **FAST)
    model, x = _batch(toy_run, images)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.embed(x), dim=1).numpy()
    res = e.embed_paths(images)
    assert e.dim == model.num_features == 84
    assert res.vectors.shape == (len(images), 84) and res.vectors.dtype == np.float32
    assert res.paths == images and res.errors == []
    np.testing.assert_allclose(res.vectors, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    pil = [Image.open(p) for p in images]
    np.testing.assert_allclose(e.embed_images(pil), ref, atol=1e-5)
    raw = Embedder(EmbeddingSpec(str(toy_run), normalize=False), **FAST).embed_paths(images)
    with torch.inference_mode():
        np.testing.assert_allclose(raw.vectors, model.embed(x).numpy(), atol=1e-5)


def test_named_layers_pool_normalize_concat(toy_run: Path, images: list[Path]) -> None:
    model, x = _batch(toy_run, images)
    with torch.inference_mode():
        f2 = model.net.features[:3](x)  # features.2: (B, 6, 14, 14)
        f5 = model.net.features(x)  # features: (B, 16, 5, 5)
    spec = EmbeddingSpec(str(toy_run), ("features.2",), pool="max", normalize=False)
    e = Embedder(spec, **FAST)
    assert e.dim == 6
    np.testing.assert_allclose(
        e.embed_paths(images).vectors, f2.amax(dim=(2, 3)).numpy(), atol=1e-5
    )
    both = Embedder(EmbeddingSpec(str(toy_run), ("net.features.2", "features")), **FAST)
    assert both.spec.layers == ("features.2", "features")
    assert both.dim == 6 + 16
    v = both.embed_paths(images).vectors
    a = torch.nn.functional.normalize(f2.mean(dim=(2, 3)), dim=1)
    b = torch.nn.functional.normalize(f5.mean(dim=(2, 3)), dim=1)
    ref = torch.cat([a, b], 1) / np.sqrt(2.0)  # both parts unit length
    np.testing.assert_allclose(v, ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v[:, :6], axis=1), 1 / np.sqrt(2), atol=1e-5)
    # A vector layer (B, C) passes through the pooling untouched.
    fc = Embedder(EmbeddingSpec(str(toy_run), ("fc",), pool="gem", normalize=False), **FAST)
    assert fc.dim == 84
    with torch.inference_mode():
        np.testing.assert_allclose(
            fc.embed_paths(images).vectors, model.embed(x).numpy(), atol=1e-5
        )


def test_pool_functions_match_plain_computation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g)
    ref_avg = np.array([[x[b, c].numpy().mean() for c in range(3)] for b in range(2)])
    ref_max = np.array([[x[b, c].numpy().max() for c in range(3)] for b in range(2)])
    clamped = np.clip(x.numpy(), 1e-6, None)
    ref_gem = (clamped**3).mean(axis=(2, 3)) ** (1 / 3)
    np.testing.assert_allclose(pool_features(x, "avg").numpy(), ref_avg, atol=1e-6)
    np.testing.assert_allclose(pool_features(x, "max").numpy(), ref_max, atol=1e-6)
    np.testing.assert_allclose(pool_features(x, "gem").numpy(), ref_gem, rtol=1e-5)
    assert torch.equal(pool_features(x[:, :, 0, 0], "gem"), x[:, :, 0, 0])  # (B, C) passes
    tokens = torch.randn(2, 7, 3, generator=g)  # (B, N, C): pooled over N
    np.testing.assert_allclose(pool_features(tokens, "avg").numpy(), tokens.mean(1).numpy())
    with pytest.raises(VitrinaError, match="unknown pool"):
        pool_features(x, "median")


def test_fingerprint(toy_run: Path, other_run: Path) -> None:
    a = Embedder(EmbeddingSpec(str(toy_run), ("features",)), **FAST)
    b = Embedder(EmbeddingSpec(str(toy_run), ("net.features",)), **FAST)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    int(a.fingerprint, 16)
    others = [
        EmbeddingSpec(str(toy_run), ("features",), pool="gem"),
        EmbeddingSpec(str(toy_run), ("features.2",)),
        EmbeddingSpec(str(toy_run), ("features",), normalize=False),
        EmbeddingSpec(str(toy_run)),
        EmbeddingSpec(str(other_run), ("features",)),
    ]
    prints = {Embedder(s, **FAST).fingerprint for s in others}
    assert len(prints) == len(others) and a.fingerprint not in prints
    # The model's own embedding is pooled already: pool does not change it.
    assert (
        Embedder(EmbeddingSpec(str(toy_run), pool="max"), **FAST).fingerprint
        == Embedder(str(toy_run), **FAST).fingerprint
    )


def test_spec_roundtrip(toy_run: Path) -> None:
    s = EmbeddingSpec(str(toy_run), ("features",), pool="gem", normalize=False)
    assert EmbeddingSpec.from_dict(s.to_dict()) == s
    assert Path(s.model).is_absolute()
    with pytest.raises(VitrinaError, match="unknown pool"):
        EmbeddingSpec(str(toy_run), pool="sum")


def test_onnx_backend_matches_eager_for_named_layers(toy_run: Path, images: list[Path]) -> None:
    pytest.importorskip("onnxruntime")
    spec = EmbeddingSpec(str(toy_run), ("features.2", "fc.1"), pool="gem")
    eager = Embedder(spec, **FAST).embed_paths(images).vectors
    onnx = Embedder(spec, backend="onnx", device="cpu", num_workers=0)
    got = onnx.embed_paths(images).vectors
    assert onnx.engine.backend_name == "onnx" and not onnx.engine.backend._fallback
    np.testing.assert_allclose(got, eager, atol=1e-3)
    # Another layer choice never reuses that export.
    other = Embedder(EmbeddingSpec(str(toy_run), ("features",)), backend="onnx", num_workers=0)
    assert other.model.arch != onnx.model.arch
    assert other.embed_paths(images[:2]).vectors.shape == (2, 16)


def test_unreadable_files_recorded(toy_run: Path, images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    missing = tmp_path / "missing.png"
    paths = [images[0], bad, images[1], missing, images[2]]
    res = embed_paths(str(toy_run), paths, **FAST)
    assert res.paths == [images[0], images[1], images[2]]
    assert [p for p, _ in res.errors] == [bad, missing]
    assert all(msg for _, msg in res.errors)
    ok = embed_paths(str(toy_run), images[:3], **FAST)
    np.testing.assert_allclose(res.vectors, ok.vectors, atol=1e-6)


def test_unknown_layer_and_model(toy_run: Path, tmp_path: Path) -> None:
    with pytest.raises(VitrinaError, match=r"no layer 'featurs\.2'.*did you mean.*features\.2"):
        Embedder(EmbeddingSpec(str(toy_run), ("featurs.2",)), **FAST)
    with pytest.raises(VitrinaError, match="did you mean"):
        Embedder("efficientnet_lite_zero")
    with pytest.raises(VitrinaError, match="not a run folder"):
        Embedder(str(tmp_path))
    with pytest.raises(VitrinaError, match="not found"):
        Embedder(str(tmp_path / "nope" / "run"))


def test_list_layers(toy_run: Path) -> None:
    names = list_layers(str(toy_run))
    assert names[:3] == ["features.0", "features.1", "features.2"]
    assert "features" in names and "fc" in names and "fc.3" in names
    assert "x" not in names


# --------------------------------------------------------------------------- CLI


def test_cli_embed_npy_csv_and_refuses_overwrite(
    capsys, toy_run: Path, images: list[Path], tmp_path: Path
) -> None:
    import csv

    from vitrina.embed.output import read_vectors

    folder = images[0].parent
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "o" / "vectors.npy"
    code, _, e = run_cli(
        capsys, "embed", toy_run, folder, bad, "--out", out, "--layer", "features",
        "--pool", "gem", "--backend", "eager",
    )  # fmt: skip
    assert code == 1  # one unreadable file: listed, the rest written
    assert "unreadable" in e and "broken.png" in e and "Traceback" not in e
    v = np.load(out)
    assert v.shape == (len(images), 16) and v.dtype == np.float32
    with out.with_suffix(".csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(images)]
    assert [int(r["index"]) for r in rows] == list(range(len(images)))
    ref = Embedder(EmbeddingSpec(str(toy_run), ("features",), pool="gem"), **FAST)
    np.testing.assert_allclose(v, ref.embed_paths(sorted(images)).vectors, atol=1e-5)
    vec2, paths2 = read_vectors(out)
    assert np.array_equal(vec2, v) and paths2 == [str(p) for p in sorted(images)]
    before = out.read_bytes()
    code, _, e = run_cli(capsys, "embed", toy_run, folder, "--out", out)
    assert code == 1 and "exists" in e and out.read_bytes() == before
    code, _, e = run_cli(capsys, "embed", toy_run, folder, "--out", tmp_path / "v.txt")
    assert code == 1 and "format" in e


def test_cli_embed_parquet(capsys, toy_run: Path, images: list[Path], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "vectors.parquet"
    code, o, _ = run_cli(
        capsys, "embed", toy_run, *images[:4], "--out", out, "--no-normalize", "--backend", "eager"
    )
    assert code == 0, o
    t = pq.read_table(out)
    assert t.column_names == ["path", "vector"] and len(t) == 4
    assert t.column("path").to_pylist() == [str(p) for p in images[:4]]
    vec = np.array(t.column("vector").to_pylist(), dtype=np.float32)
    ref = Embedder(EmbeddingSpec(str(toy_run), normalize=False), **FAST).embed_paths(images[:4])
    np.testing.assert_allclose(vec, ref.vectors, atol=1e-5)
    import json

    meta = json.loads(t.schema.metadata[b"vitrina"])
    assert meta["fingerprint"] == Embedder(EmbeddingSpec(str(toy_run), normalize=False)).fingerprint


def test_cli_list_layers_and_errors(capsys, toy_run: Path, images: list[Path], tmp_path) -> None:
    code, o, _ = run_cli(capsys, "embed", toy_run, "--list-layers")
    assert code == 0
    assert "features.2" in o and "6 x 14 x 14" in o and "16 x 5 x 5" in o and "84" in o
    code, _, e = run_cli(
        capsys, "embed", toy_run, images[0], "--out", tmp_path / "v.npy", "--layer", "fc.9"
    )
    assert code == 1 and "no layer 'fc.9'" in e and "Traceback" not in e
    assert len(e.strip().splitlines()) == 1
    code, _, e = run_cli(capsys, "embed", "resnet_99", images[0], "--out", tmp_path / "v.npy")
    assert code == 1 and "resnet_99" in e
    assert not (tmp_path / "v.npy").exists()


def test_cli_evaluate_retrieval(capsys, toy_run: Path, tmp_path: Path) -> None:
    import json

    from conftest import make_dataset

    # Held-out images of the three colours the toy run learned: retrieval is near perfect.
    data = make_dataset(tmp_path / "colours", per_class=6)
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(3):  # the same colours, each spread over all three folders
            make_image(
                tmp_path / "mixed" / f"folder{i}" / f"{name}-{i}.png", rgb, seed=900 + ci * 7 + i
            )
    out = tmp_path / "eval"
    code, o, _ = run_cli(
        capsys, "evaluate-retrieval", data, "--model", toy_run, "--out", out, "--backend", "eager"
    )
    assert code == 0, o
    assert "mAP" in o and "precision" in o and "CMC" in o and "18 queries" in o
    rep = json.loads((out / "report.json").read_text())
    assert rep["mAP"] > 0.95 and rep["precision"]["1"] > 0.9 and rep["n_queries"] == 18
    assert rep["recall"]["10"] > 0.9 and rep["gallery_size"] == 17
    assert (out / "retrieval.png").read_bytes()[:4] == b"\x89PNG"
    # Labels that do not follow colour: the same embedding retrieves them at chance level,
    # so the figure above measures the embedding, not the metric.
    code, o, _ = run_cli(
        capsys, "evaluate-retrieval", tmp_path / "mixed", "--model", toy_run, "--json",
        "--backend", "eager",
    )  # fmt: skip
    assert code == 0
    mixed = json.loads(o)
    assert mixed["mAP"] < 0.6 and mixed["n_queries"] == 9
    code, _, e = run_cli(capsys, "evaluate-retrieval", data, "--model", toy_run, "--out", out)
    assert code == 1 and "exists" in e


def test_layer_shapes_leaves_the_model_mode_alone():
    from vitrina.embed.layers import layer_shapes
    from vitrina.models import create

    model = create("tutorial_cnn").train()
    layer_shapes(model)
    assert all(m.training for m in model.modules())
