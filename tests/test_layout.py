"""Training in channels-last (NHWC): chosen by measurement, the same computation as NCHW."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import make_dataset, toy_config
from vitrina.errors import VitrinaError
from vitrina.training import layout as layout_mod
from vitrina.training import train_classifier
from vitrina.training.layout import LayoutChoice, choose_memory_format, memory_format, to_layout

CPU = torch.device("cpu")
SMALL = SimpleNamespace(channels=3, input_size=(24, 24))


def _convnet() -> nn.Module:
    """A conv net past the no-trial size (about 2.4M parameters), quick at 24x24."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64),  # depthwise: the case channels-last is for
        nn.Conv2d(64, 512, 1),
        nn.Conv2d(512, 512, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@pytest.mark.parametrize(
    ("kind", "kw", "reason"),
    [
        ("conv", {"trainable": False}, "cached features"),
        ("conv", {"precision": "fp64"}, "fp64"),
        ("linear", {}, "no 2-d convolutions"),
        ("tiny", {}, "tiny network"),
    ],
)
def test_no_trial_where_channels_last_cannot_pay(monkeypatch, kind, kw, reason) -> None:
    monkeypatch.setattr(layout_mod, "_timed_step", lambda *a: pytest.fail("a trial step ran"))
    model = {
        "conv": _convnet,
        "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 24, 1024)),
        "tiny": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten()),
    }[kind]()
    choice = choose_memory_format(model, CPU, 8, preprocess=SMALL, **kw)
    assert choice.chosen == "contiguous" and reason in choice.reason


@pytest.mark.parametrize(("last_time", "chosen"), [(0.5, "channels_last"), (0.95, "contiguous")])
def test_the_layout_follows_the_measurement(monkeypatch, last_time, chosen) -> None:
    """channels-last only when its steps are at least MIN_GAIN (1.1x) faster."""

    def timed(model, x, precision, step) -> float:
        return last_time if x.is_contiguous(memory_format=torch.channels_last) else 1.0

    monkeypatch.setattr(layout_mod, "_timed_step", timed)
    choice = choose_memory_format(_convnet(), CPU, 8, preprocess=SMALL)
    assert choice.chosen == chosen
    assert choice.contiguous_steps_per_s == pytest.approx(1.0)
    assert choice.channels_last_steps_per_s == pytest.approx(1 / last_time)
    assert f"{1 / last_time:.2f}x" in choice.describe()


def test_the_environment_forces_a_layout_without_a_trial(monkeypatch) -> None:
    monkeypatch.setattr(layout_mod, "_timed_step", lambda *a: pytest.fail("a trial step ran"))
    monkeypatch.setenv("VITRINA_LAYOUT", "contiguous")
    assert choose_memory_format(_convnet(), CPU, 8, preprocess=SMALL).describe() == (
        "contiguous (VITRINA_LAYOUT=contiguous)"
    )
    monkeypatch.setenv("VITRINA_LAYOUT", "nhwc")
    with pytest.raises(VitrinaError, match="VITRINA_LAYOUT"):
        choose_memory_format(_convnet(), CPU, 8, preprocess=SMALL)


def test_the_trial_leaves_the_model_alone() -> None:
    model = _convnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = choose_memory_format(model, CPU, 4, preprocess=SMALL)
    assert choice.chosen in ("contiguous", "channels_last")
    assert choice.contiguous_steps_per_s and choice.channels_last_steps_per_s
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous(), k  # weights, BN statistics
    assert all(p.grad is None for p in model.parameters())


def test_to_layout_keeps_the_parameter_objects() -> None:
    """An optimizer made before the conversion still holds the model's parameters."""
    model = _convnet()
    params = list(model.parameters())
    to_layout(model, "channels_last")
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(VitrinaError, match="not one of"):
        memory_format("nhwc")


def test_a_channels_last_run_is_the_contiguous_run(tmp_path: Path, monkeypatch) -> None:
    """Same seed, data and steps in both layouts: the same weights (to float rounding), saved
    contiguous, and the run says which layout trained it."""
    import vitrina.training.classification as classification

    data = make_dataset(tmp_path / "data", per_class=6)
    runs = {}
    for name in ("contiguous", "channels_last"):
        forced = LayoutChoice(name, "forced by the test")
        monkeypatch.setattr(classification, "choose_memory_format", lambda *a, f=forced, **k: f)
        cfg = toy_config(data, tmp_path / name, epochs=2, optimizer="sgd", lr=0.02)
        res = train_classifier(cfg, progress=False)
        assert res.metrics["layout"] == f"{name} (forced by the test)"
        runs[name] = load_file(str(res.run_dir / "model.safetensors"))
    plain, last = runs["contiguous"], runs["channels_last"]
    assert plain.keys() == last.keys()
    for k in plain:
        assert last[k].is_contiguous(), k
        torch.testing.assert_close(last[k], plain[k], rtol=1e-3, atol=1e-5, msg=k)
