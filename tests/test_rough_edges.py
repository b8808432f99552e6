"""Rough edges a demanding user meets on the command line, each refused in one line before any
work: a fixed-size network asked for another input size, a one-process trainer launched by
torchrun, and the one reading of every size option (HEIGHTxWIDTH)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from conftest import make_dataset, one_line_error, run_cli
from vitrina.errors import InputSizeError, VitrinaError

FIXED = ("lenet5", "tutorial_cnn")


# ------------------------------------------------------------ fixed-size networks
@pytest.mark.parametrize("arch", FIXED)
@pytest.mark.parametrize("command", ["train-embedding", "train-autoencoder"])
def test_a_fixed_size_network_at_another_size_is_one_line_before_any_work(
    capsys, tmp_path: Path, arch: str, command: str
) -> None:
    data = make_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, command, data, "--arch", arch, "--input-size", "64x64", "--out", out,
        "--epochs", "1", "--workers", "0", "--device", "cpu",
    )  # fmt: skip
    assert code == 1, err
    one_line_error(err, arch, "32x32", "64x64")
    assert not out.exists()  # refused before the run folder (or anything else) was made


def test_the_fixed_size_is_read_from_the_model_not_its_name(tmp_path: Path) -> None:
    """Generic: what the registry declares is what the built model states, the check reads
    it (not a list of names), and the model's own size, or none, passes."""
    from vitrina.models import check_input_size, create
    from vitrina.models.preprocess import Preprocess

    for arch in FIXED:
        pre = create(arch, weights="none").preprocess
        assert pre.fixed_size and pre.input_size == (32, 32)
        check_input_size(arch, None)
        check_input_size(arch, (32, 32))
        check_input_size(f"vitrina/{arch}", (32, 32))
        with pytest.raises(InputSizeError, match=f"{arch} takes 32x32 input only"):
            check_input_size(f"vitrina/{arch}", (48, 32))
        assert Preprocess.from_dict(pre.to_dict()) == pre  # saved with the run: kept
    # a network with global pooling takes any size: no error, no build needed
    check_input_size("efficientnet_lite0", (64, 96))
    assert not create("efficientnet_lite0", weights="none").preprocess.fixed_size
    # run folders of networks that take any size record exactly what they did before
    assert "fixed_size" not in Preprocess().to_dict()
    # a model whose run folder states a fixed size (not a registered name) is refused too
    fixed = Preprocess(input_size=(28, 28), channels=1, mean=(0.5,), std=(0.5,), fixed_size=True)
    with pytest.raises(InputSizeError, match="my_net takes 28x28 input only"):
        fixed.check_size((56, 56), "my_net")


def test_fixed_size_networks_still_train_at_their_own_size(capsys, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_class=4)
    code, _, err = run_cli(
        capsys, "train-autoencoder", data, "--arch", "lenet5", "--input-size", "32x32",
        "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run", "--workers", "0",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "run" / "vitrina.json").is_file()


# ------------------------------------------------------------ torchrun guards
@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["train-autoencoder"], "vitrina train-autoencoder"),
        (["detect", "train"], "vitrina detect train"),
    ],
)
def test_one_process_trainers_refuse_torchrun(
    capsys, monkeypatch, tmp_path: Path, argv: list[str], command: str
) -> None:
    data = make_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, _, err = run_cli(capsys, *argv, data, "--out", out, "--device", "cpu")
    assert code == 1, err
    one_line_error(err, command, "torchrun", "one process", "train-embedding")
    assert not out.exists()


def test_one_process_trainers_run_without_torchrun(monkeypatch) -> None:
    from vitrina.training.distributed import single_process

    monkeypatch.setenv("WORLD_SIZE", "1")
    single_process("vitrina train-autoencoder")  # a world of one is one process
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(VitrinaError, match="torchrun started 4"):
        single_process("vitrina detect train")


# ------------------------------------------------------------ one size convention
def test_every_size_option_reads_height_x_width_with_one_parser() -> None:
    """Every option that takes a size pair is --input-size, parsed by the one parser and
    documented identically; the only other one is detect's deprecated --size."""
    from vitrina.cli import _common, _register, app

    _register()
    root = typer.main.get_command(app)
    seen = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))
        for p in getattr(cmd, "params", []):
            opts = getattr(p, "opts", [])
            help_text = getattr(p, "help", "") or ""
            metavar = getattr(p, "metavar", "") or ""
            if re.fullmatch(r"[A-Z]+x[A-Z]+", metavar) or re.search("WIDTH|HEIGHT", help_text):
                seen.append((" ".join(path), opts, p.metavar, help_text))

    walk(root, ())
    pairs = {(cmd, tuple(opts)) for cmd, opts, _, _ in seen}
    assert {
        ("train-embedding", ("--input-size",)),
        ("train-autoencoder", ("--input-size",)),
        ("detect train", ("--input-size",)),
        ("detect train", ("--size",)),
    } <= pairs
    for cmd, opts, metavar, help_text in seen:
        if opts == ["--size"]:
            assert cmd == "detect train" and help_text.startswith("Deprecated: WIDTHxHEIGHT")
            continue
        assert opts == ["--input-size"], (cmd, opts)
        assert metavar == _common.SIZE_METAVAR and help_text.startswith(_common.SIZE_HELP), cmd
    assert _common.parse_size("256x128") == (256, 128) and _common.parse_size("320") == (320, 320)
    for bad in ("256by128", "0x10", "1x2x3", ""):
        with pytest.raises(typer.BadParameter, match="expected HEIGHTxWIDTH"):
            _common.parse_size(bad)


def _captured_detect_config(monkeypatch, capsys, *argv) -> tuple:
    import vitrina.detect as detect

    seen = {}

    def fake(cfg, **kw):
        seen["cfg"] = cfg.resolved()
        raise VitrinaError("stopped before training")

    monkeypatch.setattr(detect, "train_detector", fake)
    code, _, err = run_cli(capsys, "detect", "train", *argv)
    return code, err, seen.get("cfg")


def test_detect_input_size_is_height_x_width(monkeypatch, capsys, tmp_path: Path) -> None:
    code, err, cfg = _captured_detect_config(
        monkeypatch, capsys, tmp_path, "--input-size", "320x416"
    )
    assert code == 1 and "warning" not in err
    assert cfg.input_size == (320, 416) and cfg.spec(2).input_size == (320, 416)
    _, _, cfg = _captured_detect_config(monkeypatch, capsys, tmp_path)
    assert cfg.input_size is None  # the default: fitted to the photos once they are read


def test_detect_size_keeps_its_old_meaning_with_a_clear_warning(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    code, err, cfg = _captured_detect_config(monkeypatch, capsys, tmp_path, "--size", "416x320")
    assert cfg.input_size == (320, 416)  # width 416, height 320: as before, never swapped
    warning = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "--size is deprecated" in warning[0]
    assert "--input-size 320x416" in warning[0] and "WIDTHxHEIGHT" in warning[0]
    code, err, cfg = _captured_detect_config(
        monkeypatch, capsys, tmp_path, "--size", "416x320", "--input-size", "416x320"
    )
    assert code == 1 and cfg is None
    one_line_error(err, "disagree", "--input-size")


def test_detect_config_reads_old_runs_and_warns_on_the_old_keyword() -> None:
    from vitrina.detect import DetectTrainConfig

    old_run = {"data_dir": "shelves", "arch": "ssdlite", "size": "416x320"}  # WIDTHxHEIGHT
    cfg = DetectTrainConfig.from_dict(old_run)
    assert cfg.input_size == (320, 416) and cfg.size is None
    again = DetectTrainConfig.from_dict(cfg.resolved().to_dict())
    assert again.input_size == (320, 416)
    with pytest.warns(FutureWarning, match="deprecated"):
        c = DetectTrainConfig(data_dir="shelves", size="416x320").resolved()
    assert c.input_size == (320, 416) and c.size is None
    with pytest.raises(VitrinaError, match=r"100x320 \(HEIGHTxWIDTH\).*multiple of 32"):
        DetectTrainConfig(data_dir="shelves", input_size=(100, 320)).resolved()


def test_explain_a_fixed_size_networks_class_at_another_size_is_one_line() -> None:
    """``vitrina explain neuron --size``: a LeNet-5 logit needs 32x32 (one line otherwise); its
    convolutional layers take any size and still draw."""
    import torch

    from vitrina.explain.featureviz import visualize
    from vitrina.models import create

    torch.manual_seed(0)
    model = create("lenet5", weights="none", num_classes=3).eval()
    with pytest.raises(InputSizeError, match=r"lenet5 takes 32x32 input only.*leave --size out"):
        visualize(model, class_index=0, size=64, steps=1)
    assert visualize(model, class_index=0, size=32, steps=1).image.size == (32, 32)
    conv = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert visualize(model, layer=conv, size=64, steps=1).image.size == (64, 64)
