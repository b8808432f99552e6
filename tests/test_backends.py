"""Every inference backend against eager fp32: same top-1, outputs within the stated
tolerance; ``auto`` only ever picks a backend that meets it; ``optimize`` variants."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import COLORS, make_dataset, make_image, usage_error
from vitrina.classify.classifier import load
from vitrina.engine import (
    BACKENDS,
    TOLERANCES,
    Engine,
    Logits,
    bf16_supported,
    compare_outputs,
)
from vitrina.errors import UnknownNameError, VitrinaError


def _batch(model, folder: Path) -> torch.Tensor:
    from vitrina.data import eval_transform
    from vitrina.io import read_image

    tf = eval_transform(model.preprocess)
    return torch.stack([tf(read_image(p)) for p in sorted(folder.rglob("*.png"))])


@pytest.fixture(scope="module")
def check_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unseen images of the toy classes (other seeds than the training set)."""
    root = tmp_path_factory.mktemp("check")
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(6):
            make_image(root / name / f"{name}-{i}.png", rgb, seed=50_000 + ci * 100 + i)
    return root


@pytest.fixture
def own_run(toy_run: Path, tmp_path: Path) -> Path:
    """A private copy of the toy run (optimize writes variants into it)."""
    return Path(shutil.copytree(toy_run, tmp_path / "run"))


@pytest.mark.parametrize(
    "backend",
    [
        "eager",
        "onnx",
        "bf16",
        "fp64",
        "int8",
        "openvino",
        "openvino-bf16",
        "openvino-int8",
        "auto",
    ],
)
def test_backend_matches_eager_fp32(backend: str, toy_run: Path, check_data: Path) -> None:
    model = load(toy_run).model
    x = _batch(model, check_data)
    with torch.inference_mode():
        ref = model.eval().classify(x.clone())
    calib = Path(json.loads((toy_run / "vitrina.json").read_text())["data"]["root"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 warns on CPUs without bf16 units
        eng = Engine(model, backend=backend, device="cpu", num_workers=0, calib=calib)
        got = eng.forward(Logits(), x)
    report = compare_outputs(ref, got)
    assert torch.equal(got.argmax(1), ref.argmax(1)), report
    tol = TOLERANCES.get(eng.backend_name, TOLERANCES["eager"])
    assert tol.ok(report), (eng.backend_name, report, tol.describe())
    if backend == "auto":
        assert eng.backend_name in BACKENDS.names() and eng.backend_name != "auto"


def test_int8_is_really_int8(toy_run: Path, tmp_path: Path) -> None:
    """The quantized file holds int8 weights and is several times smaller than fp32."""
    import onnx

    from vitrina.engine.int8 import calibration_tensors, quantize_int8
    from vitrina.engine.onnx import export_onnx

    model = load(toy_run).model
    calib = Path(json.loads((toy_run / "vitrina.json").read_text())["data"]["root"])
    batch, used = calibration_tensors(calib, model, max_images=12)
    assert len(batch) == len(used) == 12
    q = quantize_int8(model, batch, tmp_path / "int8.onnx")
    f = export_onnx(model, "logits", tmp_path / "fp32.onnx")
    types = {t.data_type for t in onnx.load(str(q)).graph.initializer}
    assert onnx.TensorProto.INT8 in types
    assert q.stat().st_size < 0.5 * f.stat().st_size


def test_shape_arithmetic_is_not_quantized(tmp_path: Path) -> None:
    """TF 'same' padding computes pads from shapes with float ops; those stay float."""
    import onnx
    import timm

    from vitrina.engine.int8 import shape_arithmetic_nodes
    from vitrina.engine.onnx import export_onnx
    from vitrina.models import VitrinaModel
    from vitrina.models.preprocess import Preprocess

    net = timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=3)
    model = VitrinaModel.wrap(net, arch="x", preprocess=Preprocess(input_size=(64, 64)))
    graph = onnx.load(str(export_onnx(model, "logits", tmp_path / "m.onnx"))).graph
    names = set(shape_arithmetic_nodes(graph))
    ops = {n.name: n.op_type for n in graph.node}
    assert names, "the dynamic padding subgraph should be found"
    assert all(ops[n] not in ("Conv", "Gemm", "MatMul") for n in names)
    assert any(ops[n] == "Shape" for n in names)
    # Everything that is excluded is fed only by shapes or constants: no activations.
    assert not any(ops[n] == "Pad" for n in names)


def test_int8_needs_calibration_images() -> None:
    from vitrina.models import create

    model = create("tutorial_cnn", num_classes=3)
    model.class_names = ["a", "b", "c"]
    eng = Engine(model, backend="int8", device="cpu", num_workers=0)
    with pytest.raises(VitrinaError, match=r"calibration images.*vitrina optimize"):
        eng.forward(Logits(), torch.zeros(1, 3, 32, 32))


def test_int8_calibration_folder_without_images(tmp_path: Path) -> None:
    from vitrina.engine.int8 import calibration_tensors
    from vitrina.models import create

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VitrinaError, match="no readable image to calibrate"):
        calibration_tensors(tmp_path, create("tutorial_cnn"))


def test_unknown_backend_suggests() -> None:
    from vitrina.models import create

    with pytest.raises(UnknownNameError, match="int8"):
        Engine(create("tutorial_cnn"), backend="int9", device="cpu")


@pytest.mark.skipif(bf16_supported(torch.device("cpu")), reason="CPU has bf16 units")
def test_bf16_says_when_the_cpu_lacks_bf16_units() -> None:
    from vitrina.models import create

    with pytest.warns(UserWarning, match="no bf16 matrix units"):
        BACKENDS.get("bf16")(create("tutorial_cnn"), torch.device("cpu"))


def test_pruned_backend_needs_a_variant(toy_run: Path) -> None:
    model = load(toy_run).model
    with pytest.raises(VitrinaError, match=r"no pruned variant.*vitrina optimize"):
        Engine(model, backend="pruned", device="cpu")


class _Garbage:
    """A fast backend with wrong answers: auto must never choose it."""

    name = "garbage"

    def __init__(self, model, device, threads=None, **options) -> None:
        self.n = model.num_classes

    def __call__(self, x, output="logits"):
        return torch.randn(len(x), self.n) * 100


def test_auto_never_picks_a_backend_outside_tolerance(toy_run, check_data, monkeypatch) -> None:
    import vitrina.engine.auto as auto

    class _Registry:
        def get(self, name):
            return _Garbage if name == "garbage" else BACKENDS.get(name)

    monkeypatch.setattr(auto, "BACKENDS", _Registry())
    monkeypatch.setattr(auto, "auto_candidates", lambda *a: ["garbage"])
    monkeypatch.setitem(auto.TOLERANCES, "garbage", TOLERANCES["onnx"])
    model = load(toy_run).model
    eng = Engine(model, backend="auto", device="cpu", num_workers=0)
    eng.forward(Logits(), _batch(model, check_data))
    d = eng.backend.decisions["logits"]
    assert d["chosen"] == "eager" and d["trials"]["garbage"]["ok"] is False
    assert "outside tolerance" in eng.describe()


def test_auto_decision_is_cached(toy_run, check_data, monkeypatch) -> None:
    import vitrina.engine.auto as auto

    model = load(toy_run).model
    x = _batch(model, check_data)
    first = Engine(model, backend="auto", device="cpu", num_workers=0)
    first.forward(Logits(), x)
    chosen = first.backend_name

    def no_timing(*a, **k):
        raise AssertionError("the cached decision should be used")

    monkeypatch.setattr(auto, "_time", no_timing)
    again = Engine(load(toy_run).model, backend="auto", device="cpu", num_workers=0)
    again.forward(Logits(), x)
    assert again.backend_name == chosen


def test_optimize_writes_measured_variants(own_run: Path, check_data: Path) -> None:
    from vitrina.engine.int8 import Int8Backend
    from vitrina.optimize import optimize_run

    calib = Path(json.loads((own_run / "vitrina.json").read_text())["data"]["root"])
    report = optimize_run(
        own_run,
        calib=calib,
        eval_dir=check_data,
        variants="bf16,int8,pruned",
        prune_flops=0.3,
        sparsify_epochs=1,
        finetune_epochs=1,
        batch_size=8,
        num_workers=0,
    )
    v = report["variants"]
    assert set(v) == {"fp32", "bf16", "int8", "pruned"}
    for name in ("int8", "pruned"):
        assert (own_run / "variants" / f"{name}.onnx").is_file()
        assert v[name]["images_per_s"] > 0
    assert (own_run / "variants" / "bf16.safetensors").stat().st_size < 0.6 * (
        own_run / "model.safetensors"
    ).stat().st_size
    assert v["fp32"]["accuracy"] == 1.0 and v["int8"]["top1_agreement"] >= 0.99
    assert v["pruned"]["notes"]["params_after"] < v["pruned"]["notes"]["params_before"]
    saved = json.loads((own_run / "variants" / "report.json").read_text())
    assert saved["variants"]["int8"]["size_bytes"] == v["int8"]["size_bytes"]
    from pictures_check import assert_png_shows_something

    assert saved["plot"] == str(own_run / "variants" / "variants.png")
    assert_png_shows_something(own_run / "variants" / "variants.png")

    # --backend int8 / pruned now use the run's variants, and agree with fp32 on top-1.
    clf = load(own_run)
    paths = sorted(check_data.rglob("*.png"))
    ref = [p.label for p in clf.predict(paths, backend="eager", num_workers=0)]
    assert [p.label for p in clf.predict(paths, backend="int8", num_workers=0)] == ref
    eng = clf.last_engine
    assert isinstance(eng.backend, Int8Backend)
    assert eng.backend.files["logits"] == own_run / "variants" / "int8.onnx"
    pruned = clf.predict(paths, backend="pruned", num_workers=0)
    assert all(p.label in clf.classes for p in pruned)
    # auto may now consider int8: the report says it met the tolerance.
    from vitrina.engine.auto import auto_candidates

    assert "int8" in auto_candidates(clf.model, torch.device("cpu"), "logits", {})


def test_optimize_cli_errors(capsys, own_run: Path, tmp_path: Path) -> None:
    from vitrina.cli import main

    data = make_dataset(tmp_path / "d", per_class=2)
    assert (
        main(
            [
                "optimize",
                str(own_run),
                "--calib",
                str(data),
                "--eval",
                str(data),
                "--variants",
                "int4",
            ]
        )
        == 2  # not a variant: a usage error, listing the variants
    )
    err = capsys.readouterr().err
    usage_error(err, "'int4' is not one of bf16, int8, openvino-int8, pruned")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "optimize",
                str(own_run),
                "--calib",
                str(empty),
                "--eval",
                str(data),
                "--variants",
                "int8",
            ]
        )
        == 1
    )
    assert "no readable image to calibrate" in capsys.readouterr().err


def test_auto_decides_once_when_threads_arrive_together(toy_run, check_data, monkeypatch) -> None:
    """`vitrina serve` runs requests in threads: the first few arrive together. Each used to
    run the trial itself, building backends (``module.to``) on the one model while another
    thread ran it: a segfault in libtorch under 64 clients (benchmarks/serve_faults.py)."""
    import threading
    import time

    import vitrina.engine.auto as auto

    built: list[int] = []

    class _Slow(_Garbage):
        name = "slow"

        def __init__(self, model, device, threads=None, **options) -> None:
            built.append(threading.get_ident())
            time.sleep(0.3)  # a build that takes a while: room for another thread to enter
            super().__init__(model, device, threads, **options)

    class _Registry:
        def get(self, name):
            return _Slow if name == "slow" else BACKENDS.get(name)

    monkeypatch.setattr(auto, "BACKENDS", _Registry())
    monkeypatch.setattr(auto, "auto_candidates", lambda *a: ["slow"])
    monkeypatch.setitem(auto.TOLERANCES, "slow", TOLERANCES["onnx"])
    model = load(toy_run).model
    eng = Engine(model, backend="auto", device="cpu", num_workers=0)
    x = _batch(model, check_data)
    start = threading.Barrier(4)
    out: list = []

    def one() -> None:
        start.wait()
        out.append(eng.forward(Logits(), x))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(out) == 4
    assert len(built) == 1, f"the trial ran {len(built)} times"
    assert eng.backend.decisions["logits"]["chosen"] == "eager"
