"""A run loaded deferred (``vitrina sort`` and ``predict``) builds its PyTorch network only
when a backend needs it: same fingerprint (so the same caches), same answers, same errors as
a run loaded at once, and no stale cache key once the network exists and changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import COLORS, make_image
from vitrina.classify.classifier import load
from vitrina.engine import Engine, Logits
from vitrina.engine.onnx import _fingerprint, onnx_available
from vitrina.errors import RunFolderError
from vitrina.runs import DeferredModel, load_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("deferred-photos")
    out = []
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(3):
            out.append(make_image(root / f"{name}-{i}.png", rgb, seed=70_000 + ci * 10 + i))
    return out


def test_the_checkpoint_gives_the_fingerprint_of_the_built_network(toy_run: Path) -> None:
    deferred = load_model(toy_run, deferred=True)
    assert isinstance(deferred, DeferredModel) and not deferred.built
    built = load_model(toy_run)
    for output in ("logits", "embed"):
        assert _fingerprint(deferred, output) == _fingerprint(built, output)
    assert not deferred.built  # reading the fingerprint did not build it


def test_chaining_calls_keep_it_deferred_and_using_it_builds_it(toy_run: Path) -> None:
    m = load_model(toy_run, deferred=True)
    assert m.eval().to("cpu") is m and not m.built and not m.training
    built = load_model(toy_run)
    assert m.arch == built.arch and m.class_names == built.class_names
    x = torch.rand(2, 3, *m.preprocess.input_size)
    got = m.classify(x)  # a method the proxy does not hold: builds the network
    assert m.built and isinstance(m.materialize(), torch.nn.Module)
    torch.testing.assert_close(got, built.classify(x))
    assert m.eval() is m.materialize()  # once built, nn.Module's chaining returns the net


def test_a_changed_network_gets_a_new_fingerprint(toy_run: Path) -> None:
    """A cached export keyed by the checkpoint must not answer for weights changed since."""
    m = load_model(toy_run, deferred=True)
    before = _fingerprint(m, "logits")
    with torch.no_grad():
        next(m.materialize().parameters()).add_(1.0)
    assert _fingerprint(m, "logits") != before


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_a_compiled_backend_runs_without_building_the_network(
    toy_run: Path, photos: list[Path]
) -> None:
    plain = Engine(load(toy_run).model, backend="eager", device="cpu", num_workers=0)
    want = [r.value.probabilities for r in plain.run(Logits(), photos)]
    warm = Engine(load(toy_run).model, backend="onnx", device="cpu", num_workers=0)
    list(warm.run(Logits(), photos[:1]))  # the export, cached by the weights' fingerprint
    m = load_model(toy_run, deferred=True)
    eng = Engine(m, backend="onnx", device="cpu", num_workers=0)
    eng.backend.trust("logits")  # as auto does with its recorded check
    got = [r.value.probabilities for r in eng.run(Logits(), photos)]
    assert not m.built
    for a, b in zip(want, got, strict=True):
        assert abs(a - b).max() < 1e-4


def test_auto_with_a_cached_decision_never_builds_the_network(
    toy_run: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load(toy_run, deferred=True)
    preds = first.predict(photos, backend="auto", device="cpu")
    chosen = first.last_engine.backend_name if first.last_engine else ""
    if chosen in ("eager", "bf16", "fp64"):
        pytest.skip(f"auto chose {chosen}, which runs the PyTorch network itself")
    again = load(toy_run, deferred=True)
    import vitrina.engine.auto as auto

    def no_trial(*a, **k):
        raise AssertionError("the cached decision should be used")

    monkeypatch.setattr(auto, "_time", no_trial)
    assert [p.label for p in again.predict(photos, backend="auto", device="cpu")] == [
        p.label for p in preds
    ]
    assert again.last_engine is not None and again.last_engine.backend_name == chosen
    assert not again.model.built


def test_a_damaged_checkpoint_fails_at_load_not_later(toy_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(toy_run, tmp_path / "run"))
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    for deferred in (False, True):
        with pytest.raises(RunFolderError, match="checkpoint does not match"):
            load_model(run, deferred=deferred)
    with pytest.raises(RunFolderError, match="unreadable checkpoint"):
        load_model(run, deferred=True, verify=False)
