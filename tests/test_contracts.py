"""Contract tests over the registries: every registered backend against eager fp32 for every
output it supports (classifier logits, embeddings, dlib's face descriptor, detector boxes), and
a clear refusal for every output it does not; every face detector on a real face. A backend,
or a detector, is tested the moment it is registered.

(Losses and miners: tests/test_losses.py parametrises over their registries; explanation
methods: tests/test_explain_attribution.py over theirs.)
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COLORS, make_image
from test_engine_tasks import GridBoxes, GridDetector, _shelf
from vitrina.engine import (
    BACKENDS,
    TOLERANCES,
    Embedding,
    Engine,
    Logits,
    batch_inputs,
    compare_outputs,
)
from vitrina.errors import VitrinaError

OUTPUTS = ("logits", "embed", "face", "boxes")


def _photos(root: Path, n: int = 6) -> Path:
    for c, rgb in COLORS.items():
        for i in range(n):
            make_image(root / c / f"{c}{i}.png", rgb, size=40, seed=700 + i)
    return root


@pytest.fixture(scope="module")
def optimized_run(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the toy classifier run with int8 and pruned variants measured on ``photos``."""
    from vitrina.optimize import optimize_run

    root = tmp_path_factory.mktemp("contract")
    run = root / "run"
    shutil.copytree(toy_run, run)
    photos = _photos(root / "photos")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimize_run(
            run,
            calib=photos,
            eval_dir=photos,
            variants=("int8", "pruned"),
            prune_flops=0.3,
            sparsify_epochs=1,
            finetune_epochs=1,
            train_dir=photos,
            batch_size=8,
            num_workers=0,
        )
    return run, photos


@pytest.fixture(scope="module")
def face_chips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Aligned chips of a real face (scikit-image's astronaut), relit and flipped."""
    from skimage import data

    from vitrina.faces.pipeline import FacePipeline

    photo = Image.fromarray(data.astronaut())
    pipe = FacePipeline(backend="eager")
    box = pipe.detect(photo)[0]
    _, chip = pipe.align(photo, box)
    root = tmp_path_factory.mktemp("chips")
    variants = {
        "plain": chip,
        "flip": chip[:, ::-1],
        "dark": (chip * 0.5).astype(np.uint8),
        "side": (chip * np.linspace(0.3, 1.0, chip.shape[1])[None, :, None]).astype(np.uint8),
    }
    paths = []
    for name, a in variants.items():
        paths.append(root / f"{name}.png")
        Image.fromarray(np.ascontiguousarray(a)).save(paths[-1])
    return paths


def _setup(output: str, optimized_run, face_chips, tmp_path: Path):
    """(model, task, items, engine options) for one output kind."""
    from vitrina.models import create
    from vitrina.runs import load_model

    if output in ("logits", "embed"):
        run, photos = optimized_run
        items = sorted(photos.rglob("*.png"))
        task = Logits() if output == "logits" else Embedding(normalize=False)
        return load_model(run), task, items, {}
    if output == "face":
        model = create("dlib_face_resnet", weights="pretrained")
        return model, Embedding(normalize=False), face_chips, {"calib": face_chips}
    shelf = _shelf(tmp_path / "shelf.png", (300, 100), [(30, 20, 60, "red"), (200, 30, 50, "blue")])
    return GridDetector(), GridBoxes(), [shelf], {}


def _cases() -> list:
    """Every (backend, output) pair. OpenVINO on dlib's face ResNet is slow (converting its
    graph takes ~15-30 s on 2 cores, NNCF's calibration more): those run with the slow tests;
    OpenVINO's logits and embeddings run always."""
    cases = []
    for name in BACKENDS.names():
        for output in OUTPUTS:
            slow = name.startswith("openvino") and output == "face"
            marks = [pytest.mark.slow] if slow else []
            cases.append(pytest.param(name, output, marks=marks, id=f"{name}-{output}"))
    return cases


@pytest.mark.parametrize(("name", "output"), _cases())
def test_every_backend_keeps_its_tolerance_or_refuses_clearly(
    name: str, output: str, optimized_run, face_chips, tmp_path: Path
) -> None:
    model, task, items, options = _setup(output, optimized_run, face_chips, tmp_path)
    klass = BACKENDS.get(name)
    dlib_other = name == "dlib" and output != "face"
    not_a_run = name == "pruned" and output in ("face", "boxes")  # variants live in run folders
    if not klass.supports(task.output) or dlib_other or not_a_run:
        with pytest.raises(VitrinaError) as info:
            eng = Engine(model, backend=name, device="cpu", num_workers=0, **options)
            eng.forward(task, batch_inputs(task, model.preprocess, items)[0])
        message = str(info.value)
        assert "\n" not in message and name in message, message
        return
    x, used = batch_inputs(task, model.preprocess, items)
    assert len(used) == len(items)
    ref = Engine(model, backend="eager", device="cpu", num_workers=0).forward(task, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 on CPUs without bf16 units says so
        eng = Engine(model, backend=name, device="cpu", num_workers=0, **options)
        got = eng.forward(task, x)
        results = eng.run_prepared(task, [eng.prepare(task, i) for i in items])
    assert len(results) == len(items)
    report = compare_outputs(ref, got, task.output)
    if name == "pruned":
        # A smaller model, not a tolerance around fp32: it must answer what optimize
        # measured on these same photos ...
        import json

        run, _ = optimized_run
        if output == "logits":
            measured = json.loads((run / "variants" / "report.json").read_text())
            agreement = measured["variants"]["pruned"]["top1_agreement"]
            assert report["top1_agreement"] == pytest.approx(agreement, abs=1.5 / len(items))
        else:  # ... and its embedding is the one its classifier reads (the same network)
            logits = eng.forward(Logits(), x)
            with torch.no_grad():
                through_head = model.head_module()(got)
            torch.testing.assert_close(through_head, logits, atol=1e-4, rtol=1e-4)
        return
    stated = eng.backend_name if name == "auto" else name  # auto answers for its choice
    tolerance = TOLERANCES.get(stated)
    assert tolerance is not None, f"backend {stated!r} states no tolerance in TOLERANCES"
    assert tolerance.ok(report), (name, stated, output, report)


def test_every_backend_states_what_it_computes() -> None:
    for name in BACKENDS.names():
        klass = BACKENDS.get(name)
        assert klass.outputs is None or all(isinstance(o, str) for o in klass.outputs), name
        assert name in TOLERANCES or name in ("pruned", "auto"), (
            f"{name}: every backend states its tolerance against eager fp32"
        )


# ---------------------------------------------------------------------------- face detectors


@pytest.mark.parametrize(
    "name", __import__("vitrina.faces.detection", fromlist=["x"]).DETECTORS.names()
)
def test_every_face_detector_finds_a_real_face_and_nothing_in_a_blank(name: str) -> None:
    from skimage import data

    from vitrina.faces.detection import DETECTORS
    from vitrina.faces.types import Box

    photo = np.ascontiguousarray(data.astronaut())  # 512x512, one face near (180, 110)
    found = DETECTORS.get(name)(photo, 0 if name == "cnn" else 1, 0.0)
    assert len(found) >= 1, name
    rect, score = max(found, key=lambda f: f[1])[:2]  # a third item: the stage that found it
    box = Box(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, score)
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    assert 140 < cx < 230 and 60 < cy < 160, (name, box)
    assert DETECTORS.get(name)(np.full((200, 200, 3), 128, np.uint8), 0, 0.0) == []
