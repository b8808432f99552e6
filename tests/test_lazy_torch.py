"""A sort whose ``auto`` decision is cached and names a runtime with its own compiled copy
(OpenVINO, ONNX Runtime) never imports PyTorch: ``import torch`` alone costs 1.3-2.7 s of
start-up on the CPUs measured (issue 17, ``benchmarks/startup.py``). The numpy path it
runs gives the labels and probabilities of the PyTorch one."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLORS, make_image
from vitrina.classify.classifier import load
from vitrina.data.pixels import EvalPixels
from vitrina.data.transforms import eval_transform, plain_eval_transform
from vitrina.engine import Embedding, Engine, Logits
from vitrina.engine.onnx import _fingerprint, onnx_available
from vitrina.engine.openvino import openvino_available
from vitrina.io import cache_dir
from vitrina.lazy import torch_version
from vitrina.models import Preprocess

# The child reports which heavy modules the command imported.
_CHILD = r"""
import json, sys
from vitrina.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "torchvision": "torchvision" in sys.modules, "timm": "timm" in sys.modules}))
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lazy-photos")
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(8):  # more than a batch: decode threads and the pipeline run
            make_image(root / f"{name}-{i}.jpg", rgb, seed=90_000 + ci * 10 + i)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _vitrina(*args: object) -> subprocess.CompletedProcess:
    """``vitrina ARGS`` in a fresh interpreter, reporting what it imported (last line)."""
    return subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
    )


def _cache_decision(run: Path, chosen: str) -> None:
    """Record ``auto``'s decision for the run as a first sort on this machine would: its
    trial (with ``chosen`` the only candidate near the fastest, so no pipeline check)."""
    from vitrina.engine.auto import auto_candidates
    from vitrina.engine.timing import machine_key
    from vitrina.runs import load_model

    model = load_model(run, deferred=True)
    candidates = auto_candidates(model, _cpu(), "logits", {})
    if chosen not in candidates:
        pytest.skip(f"{chosen} is not an auto candidate here ({candidates})")
    trials = {n: {"images_per_s": 1.0, "ok": True} for n in ["eager", *candidates]}
    trials[chosen] = {"images_per_s": 100.0, "ok": True}
    decision = {
        "chosen": chosen,
        "machine": machine_key(),
        "candidates": candidates,
        "batch": 16,
        "threads": os.cpu_count(),
        "trials": trials,
    }
    arch = model.arch.replace("/", "_")
    path = cache_dir("auto") / f"{arch}-{_fingerprint(model, 'logits')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision))


def _cpu():
    import torch

    return torch.device("cpu")


@pytest.mark.parametrize("chosen", ["onnx", "openvino"])
def test_a_cached_runtime_decision_sorts_without_importing_torch(
    chosen: str, toy_run: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not onnx_available() or (chosen == "openvino" and not openvino_available()):
        pytest.skip(f"{chosen} is not installed")
    monkeypatch.setenv("VITRINA_CACHE", str(tmp_path / "cache"))  # this test's decisions only
    # The runtime's compiled copy exists (a first sort made it), and the decision is cached.
    warm = Engine(load(toy_run).model, backend=chosen, device="cpu", num_workers=0)
    list(warm.run(Logits(), sorted(photos.glob("red-*.jpg"))[:2]))
    _cache_decision(toy_run, chosen)

    out = tmp_path / "sorted"
    done = _vitrina("sort", photos, "--model", toy_run, "--out", out, "--backend", "auto")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "torch": False, "torchvision": False, "timm": False}
    assert f"auto -> {chosen}" in done.stdout + done.stderr

    # predict on two photos decodes inline, in the same numpy path
    two = [str(p) for p in sorted(photos.glob("blue-*.jpg"))[:2]]
    done = _vitrina("predict", toy_run, *two)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["torch"] is False
    assert all(f"{p}: blue" in done.stdout for p in two), done.stdout

    # The same labels and probabilities as eager PyTorch on every readable photo; the
    # corrupt one is recorded, not sorted.
    with (out / "manifest.csv").open() as f:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(f)}
    assert rows["broken.jpg"]["status"] != "sorted" and rows["broken.jpg"]["error"]
    clf = load(toy_run)
    files = sorted(p for p in photos.glob("*.jpg") if p.name != "broken.jpg")
    eager = Engine(clf.model, backend="eager", device="cpu", num_workers=0)
    for r in eager.run(Logits(), files):
        row = rows[Path(r.item).name]
        label, p = r.value.best
        assert row["label"] == clf.model.class_names[label]
        assert abs(float(row["confidence"]) - p) < 1e-3


def test_the_numpy_path_equals_the_tensor_path(toy_run: Path, photos: Path) -> None:
    """One backend, the same photos: numpy batches (what the engine hands a runtime) and
    tensor batches give the same logits, probabilities and embeddings."""
    if not onnx_available():
        pytest.skip("onnxruntime is not installed")
    model = load(toy_run).model
    eng = Engine(model, backend="onnx", device="cpu", num_workers=0)
    files = sorted(photos.glob("*-[0-3].jpg"))
    prepared = [eng.prepare(Logits(), f) for f in files]
    assert all(isinstance(p.inputs, np.ndarray) for p in prepared)
    x = np.concatenate([p.inputs for p in prepared])
    import torch

    eng.forward(Logits(), torch.from_numpy(x))  # the first batch checks against eager
    from_arrays = eng.forward(Logits(), x)
    from_tensors = eng.forward(Logits(), torch.from_numpy(x))
    assert isinstance(from_arrays, np.ndarray) and isinstance(from_tensors, torch.Tensor)
    np.testing.assert_allclose(from_arrays, from_tensors.numpy(), rtol=1e-5, atol=1e-6)

    counts = [1] * len(files)
    a = Logits(top_k=2).finish(from_arrays, counts, [None] * len(files))
    t = Logits(top_k=2).finish(from_tensors, counts, [None] * len(files))
    ref = torch.from_numpy(from_arrays).softmax(1).numpy()
    for sa, st, r in zip(a, t, ref, strict=True):
        np.testing.assert_allclose(sa.probabilities, r, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sa.probabilities, st.probabilities, rtol=1e-5, atol=1e-7)
        assert [j for j, _ in sa.top] == [j for j, _ in st.top]
        assert sa.top[0][0] == int(np.argmax(r))

    y = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    want = torch.nn.functional.normalize(torch.from_numpy(y), dim=1).numpy()
    for task_out in (y, torch.from_numpy(y)):
        got = np.stack(Embedding().finish(task_out, [1, 1, 1], [None] * 3))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("size", "crop_pct", "photo"),
    [((32, 32), 0.875, (80, 60)), ((24, 40), 1.0, (50, 90)), ((64, 64), 1.2, (30, 45))],
)
def test_eval_pixels_equal_the_eval_transform(
    size: tuple[int, int], crop_pct: float, photo: tuple[int, int]
) -> None:
    """The numpy eval preparation is the tensor transform's arithmetic, and both stay within
    a grey level of torchvision's reference (a crop larger than the photo: zero padding)."""
    pre = Preprocess(input_size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=crop_pct)
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (photo[1], photo[0], 3), dtype=np.uint8))
    arr = EvalPixels(pre)(img)
    assert arr.dtype == np.float32 and arr.shape == (3, *size)
    np.testing.assert_array_equal(arr, eval_transform(pre)(img).numpy())
    ref = plain_eval_transform(pre)(img).numpy()
    grey = 1 / (255 * min(pre.std))
    assert np.abs(arr - ref).max() <= 1.01 * grey


def test_the_torch_version_is_read_without_importing_it() -> None:
    """Cache keys name torch's version; reading it from the package must give
    ``torch.__version__`` exactly, or every cached export would be made twice."""
    import torch

    assert torch_version() == torch.__version__
    child = (
        "import sys; from vitrina.lazy import torch_version; v = torch_version(); "
        "print(v, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=120,
    )
    assert done.stdout.split() == [torch.__version__, "False"], done.stderr


def test_the_cpu_named_without_torch_works_wherever_torch_takes_a_device() -> None:
    """A torch-free run names the CPU as a ``CpuDevice``; a backend that later needs
    PyTorch (auto's fallback to eager) hands that to torch as it is."""
    import torch

    from vitrina.engine.engine import CpuDevice

    cpu = CpuDevice()
    assert (cpu.type, cpu.index, str(cpu)) == ("cpu", None, "cpu")
    assert torch.device(cpu) == torch.device("cpu")
    net = torch.nn.Linear(2, 2).to(cpu)
    x = torch.ones(1, 2).to(cpu, non_blocking=True)
    assert net(x).device.type == "cpu" and torch.zeros(1, device=cpu).device.type == "cpu"
    with torch.autocast(device_type=cpu.type, dtype=torch.bfloat16):
        assert net(x).dtype == torch.bfloat16
