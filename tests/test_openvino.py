"""The OpenVINO backends: the IR cache, NNCF's int8 really is int8, ``vitrina optimize``
offers it and ``auto`` may then try it. (Agreement with eager fp32 for every backend is
``test_backends.test_backend_matches_eager_fp32``.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vitrina.classify.classifier import load
from vitrina.engine import Engine, Logits

pytest.importorskip("openvino")


@pytest.fixture
def own_run(toy_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(toy_run, tmp_path / "run"))


def test_ir_is_converted_once_and_reused(toy_run: Path, monkeypatch) -> None:
    import vitrina.engine.onnx as onnx_mod
    from vitrina.engine.openvino import openvino_ir

    model = load(toy_run).model
    xml = openvino_ir(model)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert not list(xml.parent.glob(".vitrina-tmp-*"))  # nothing half-written left behind

    def no_export(*a, **k):
        raise AssertionError("the cached IR should be used")

    monkeypatch.setattr(onnx_mod, "export_onnx", no_export)
    assert openvino_ir(load(toy_run).model) == xml


def test_openvino_int8_holds_int8_weights(toy_run: Path, tmp_path: Path) -> None:
    import openvino as ov

    from vitrina.engine.int8 import calibration_tensors
    from vitrina.engine.openvino import openvino_ir, quantize_openvino

    model = load(toy_run).model
    calib = Path(json.loads((toy_run / "vitrina.json").read_text())["data"]["root"])
    batch, _ = calibration_tensors(calib, model, max_images=12)
    q = quantize_openvino(model, batch, tmp_path / "q.xml")
    ops = {op.get_type_name() for op in ov.Core().read_model(str(q)).get_ops()}
    assert "FakeQuantize" in ops
    consts = [
        op.get_element_type().get_type_name()
        for op in ov.Core().read_model(str(q)).get_ops()
        if op.get_type_name() == "Constant"
    ]
    assert "i8" in consts
    fp32 = openvino_ir(model)
    assert q.with_suffix(".bin").stat().st_size < 0.5 * fp32.with_suffix(".bin").stat().st_size


def test_optimize_offers_openvino_int8_and_auto_may_use_it(own_run: Path, toy_run: Path) -> None:
    from vitrina.engine.auto import auto_candidates
    from vitrina.engine.openvino import OpenVinoInt8Backend
    from vitrina.optimize import optimize_run

    data = Path(json.loads((own_run / "vitrina.json").read_text())["data"]["root"])
    report = optimize_run(
        own_run, calib=data, eval_dir=data, variants="openvino-int8", batch_size=8, num_workers=0
    )
    v = report["variants"]["openvino-int8"]
    assert (own_run / "variants" / "openvino-int8.xml").is_file()
    assert v["images_per_s"] > 0 and v["top1_agreement"] >= 0.99
    clf = load(own_run)
    assert "openvino-int8" in auto_candidates(clf.model, torch.device("cpu"), "logits", {})
    paths = sorted(data.rglob("*.png"))[:8]
    ref = [p.label for p in clf.predict(paths, backend="eager", num_workers=0)]
    assert [p.label for p in clf.predict(paths, backend="openvino-int8", num_workers=0)] == ref
    eng = clf.last_engine
    assert isinstance(eng.backend, OpenVinoInt8Backend)
    assert eng.backend.files["logits"] == own_run / "variants" / "openvino-int8.xml"


def test_openvino_splits_a_batch_across_its_streams(toy_run: Path) -> None:
    """Every row comes back in its place whatever the batch size (streams take chunks)."""
    model = load(toy_run).model
    eng = Engine(model, backend="openvino", device="cpu", num_workers=0, threads=2)
    torch.manual_seed(0)
    for n in (1, 2, 3, 7, 16):
        x = torch.randn(n, 3, *model.preprocess.input_size)
        with torch.inference_mode():
            ref = model.eval().classify(x)
        got = eng.forward(Logits(), x)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4), n
