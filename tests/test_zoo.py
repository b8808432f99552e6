"""The zoo: classic architectures by one name, their figures, timings, plot and CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from conftest import one_line_error, usage_error
from conftest import run_cli as run
from vitrina.errors import UnknownNameError, VitrinaError
from vitrina.models import create, list_models
from vitrina.models.registry import ALIASES, resolve_name
from vitrina.models.weights import pretrained_available_offline
from vitrina.zoo import CLASSIC, describe, measure, plot_zoo
from vitrina.zoo import catalogue as zoo
from vitrina.zoo import measurements as zoo_measure

#: Over 20M parameters: 1-3 s each to build, train a step and reload on two cores, so their
#: forward/backward contract runs with `make test-all`; their figures are checked always.
HEAVY = {
    "alexnet",
    "vgg16",
    "inception_v3",
    "resnet50",
    "resnext50",
    "inception_resnet_v2",
    "xception",
    "se_resnet50",
}
#: Smallest convenient input per architecture (default 64).
SMALL_INPUT = {"lenet5": 32, "inception_v3": 75, "inception_resnet_v2": 75}
#: torchvision nets vitrina builds without their training-only auxiliary heads.
NO_AUX = {"googlenet", "inception_v3"}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Offline, and no weights caches of this machine: only the bundled package counts."""
    monkeypatch.setenv("VITRINA_OFFLINE", "1")
    empty = tmp_path_factory.getbasetemp() / "no-weights-caches"
    monkeypatch.setenv("TORCH_HOME", str(empty / "torch"))
    monkeypatch.setenv("HF_HOME", str(empty / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


def _library_net(name: str, num_classes: int | None = None, *, aux: bool = False) -> nn.Module:
    """The network as its source library builds it (default head unless ``num_classes``),
    on the meta device (shapes only)."""
    import timm
    import torchvision

    from vitrina.models.small import LeNet5

    source, arch = resolve_name(name)
    kw: dict = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        if name == "lenet5":
            return LeNet5(**kw)
        if name == "efficientnet_lite0":
            return timm.create_model("tf_efficientnet_lite0", **kw)
        if source == "timm":
            return timm.create_model(arch, **kw)
        if arch in NO_AUX:
            kw.update(aux_logits=aux, init_weights=False)
        return torchvision.models.get_model(arch, weights=None, **kw)


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------- the classics
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in CLASSIC]
)
def test_classic_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, weights=None, num_classes=5)
    assert resolve_name(model.arch) == resolve_name(name)  # the recorded arch rebuilds it
    size = SMALL_INPUT.get(name, 64)
    x = torch.randn(2, model.preprocess.channels, size, size)

    model.train()
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.square().mean().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert model.embed(x).shape == (2, model.num_features)

    # what a run folder does: record model.arch, rebuild from it, load safetensors (built on
    # the meta device and assigned the loaded tensors: no second random init)
    model.eval()
    blob = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})
    with torch.device("meta"):
        again = create(model.arch, weights=None, num_classes=5)
    again.load_state_dict(safetensors.torch.load(blob), strict=True, assign=True)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))

    assert _count(model) == _count(_library_net(name, 5))


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_figures(name: str) -> None:
    """describe() counts the network as its library builds it (shapes only: cheap for all)."""
    entry = describe(name)
    assert entry.params == _count(_library_net(name))
    assert entry.gflops > 0 and entry.size_mb_fp32 > 4 * entry.params / 1e6 * 0.999
    assert entry.family != zoo.OTHER and entry.year is not None and entry.paper

    source, arch = resolve_name(name)
    if source == "torchvision":
        import torchvision

        meta = torchvision.models.get_model_weights(arch).DEFAULT.meta
        assert entry.top1 == meta["_metrics"]["ImageNet-1K"]["acc@1"]
        if arch == "inception_v3":  # torchvision's count includes the auxiliary classifier
            aux = _library_net(name, aux=True)
            assert meta["num_params"] == _count(aux)
            assert entry.params == meta["num_params"] - _count(aux.AuxLogits)
        else:
            assert entry.params == meta["num_params"]
    else:
        assert entry.top1 is None


def test_aliases_resolve_list_and_round_trip(tmp_path: Path) -> None:
    from vitrina.runs import RunInfo, load_model, save_run

    names = list_models()
    for alias, (source, arch) in ALIASES.items():
        assert resolve_name(alias) == (source, arch)
        assert alias in names and alias in list_models(source=source)
        assert alias in CLASSIC
    assert list_models("*xception*")[:2] == ["legacy_xception", "xception"]
    with pytest.raises(UnknownNameError, match="did you mean"):
        resolve_name("resnext5O")

    model = create("mnasnet", num_classes=3).eval()
    assert model.arch == "mnasnet1_0"
    run = save_run(
        tmp_path / "run",
        model,
        RunInfo(arch=model.arch, classes=list("abc"), preprocess=model.preprocess),
    )
    again = load_model(run)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_family_table() -> None:
    assert zoo.family_of("se_resnet50").name == "SENet"
    assert zoo.family_of("seresnext50_32x4d").name == "SENet"
    assert zoo.family_of("resnext50_32x4d").name == "ResNeXt"
    assert zoo.family_of("timm/resnet50.a1_in1k").name == "ResNet"
    assert zoo.family_of("tf_efficientnet_lite0").name == "EfficientNet-Lite"
    assert zoo.family_of("tf_efficientnet_b3").name == "EfficientNet"
    assert zoo.family_of("mobilenetv3_large_100").name == "MobileNetV3"
    assert zoo.family_of("xception").name == "Xception"
    assert zoo.family_of("xception41").name == "Aligned Xception"
    assert zoo.family_of("tutorial_cnn") is None
    names = zoo.family_names()
    assert len(names) == len(set(names)) and names[-1] == "other"


def test_every_zoo_entry_states_a_plausible_year_and_its_paper() -> None:
    """The catalogue's history is right: no model dated before the perceptron or after now,
    every family and every entry listed by default names its paper, a year the paper states
    is the year listed, and the classics before CNNs carry their own papers' years (not the
    perceptron's 1958 for all three)."""
    import datetime
    import re

    this_year = datetime.date.today().year
    stated = [(f.name, f.year, f.paper) for f in zoo.FAMILIES]
    stated += [
        (f"{f.name}/{pat}", p.year, p.title)
        for f in zoo.FAMILIES
        for pat, p in getattr(f, "papers", ())
    ]
    for name in (*zoo.BEFORE_CNNS, *CLASSIC):
        entry = describe(name)
        assert entry.family != zoo.OTHER, name
        stated.append((name, entry.year, entry.paper))
    for what, year, paper in stated:
        assert year is not None and 1958 <= year <= this_year, (what, year)
        assert paper and paper.strip() == paper and len(paper) > 10, (what, paper)
        years = {int(y) for y in re.findall(r"\b(19[5-9]\d|20\d\d)\b", paper)}
        assert not years or year == min(years) or year in years, (what, year, paper)
    expected = {"mlp_pixels": 1958, "sift_bovw_svm": 2004, "hog_svm": 2005, "lenet5": 1998}
    for name, year in expected.items():
        entry = describe(name)
        assert entry.year == year, (name, entry.year, entry.paper)
        if name in zoo.BEFORE_CNNS:
            assert str(year) in (entry.paper or ""), (name, entry.paper)
    assert "Dalal" in (describe("hog_svm").paper or "")
    assert "Csurka" in (describe("sift_bovw_svm").paper or "")
    assert "Rosenblatt" in (describe("mlp_pixels").paper or "")


# ---------------------------------------------------------------------------- counting
def test_flops_of_a_conv_by_formula() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=0)
    x = torch.randn(1, 3, 10, 12)
    # 2 FLOPs per multiply-accumulate, one MAC per (out channel, out pixel, in channel, tap)
    assert zoo.count_flops(conv, x) == 2 * 8 * 8 * 10 * 3 * 3 * 3


def test_lenet5_flops_and_sizes_by_hand() -> None:
    e = describe("lenet5")
    macs = (
        6 * 28 * 28 * (1 * 5 * 5)  # conv 1->6, 5x5, 32x32 -> 28x28
        + 16 * 10 * 10 * (6 * 5 * 5)  # conv 6->16, 5x5, 14x14 -> 10x10
        + 400 * 120
        + 120 * 84
        + 84 * 10
    )
    assert round(e.gflops * 1e9) == 2 * macs
    params = (6 * 25 + 6) + (16 * 150 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    biases = 6 + 16 + 120 + 84 + 10
    assert e.params == params == 61706
    assert e.size_mb_fp32 == pytest.approx(4 * params / 1e6)
    assert e.size_mb_bf16 == pytest.approx(2 * params / 1e6)
    assert e.size_mb_int8 == pytest.approx(((params - biases) + 4 * biases) / 1e6)
    assert (e.input_size, e.channels, e.family, e.year) == ((32, 32), 1, "LeNet", 1998)


def test_sizes_count_buffers() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    params, fp32, bf16, int8 = zoo._sizes(net)
    assert params == 8 * 27 + 8 + 16
    # running mean/var (fp32) + num_batches_tracked (one int64)
    assert fp32 == 4 * params + 4 * 16 + 8
    assert bf16 == 2 * params + 2 * 16 + 8
    assert int8 == 8 * 27 + 4 * (8 + 16) + 4 * 16 + 8


def test_meta_count_equals_a_real_forward() -> None:
    import torchvision

    e = describe("mobilenet_v3_small")
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    assert e.gflops * 1e9 == pytest.approx(zoo.count_flops(net, torch.zeros(1, 3, 224, 224)))
    assert e.params == _count(net)


def test_describe_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = describe("squeezenet1_1")
    assert zoo.is_described("squeezenet1_1")

    def no_build(*a, **k):
        raise AssertionError("the cached description must not build the model")

    monkeypatch.setattr(zoo, "create", no_build)
    assert describe("squeezenet1_1") == first
    with pytest.raises(VitrinaError, match="must not build"):
        describe("squeezenet1_1", refresh=True)

    # a damaged cache file is recomputed, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("VITRINA_OFFLINE", "1")
    path = zoo._static_path("torchvision", "squeezenet1_1")
    path.write_text("{not json")
    assert not zoo.is_described("squeezenet1_1")
    assert describe("squeezenet1_1") == first
    assert json.loads(path.read_text())["params"] == first.params


def test_unusable_names_are_one_line_errors() -> None:
    with pytest.raises(UnknownNameError, match="did you mean"):
        describe("mobilenet_v9")


# ---------------------------------------------------------------------------- weights on disk
def test_pretrained_offline_looks_where_loading_looks(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    assert pretrained_available_offline("vitrina", "efficientnet_lite0")  # bundled package
    assert not pretrained_available_offline("vitrina", "lenet5")
    assert describe("efficientnet_lite0").pretrained_offline

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert not describe("squeezenet1_1").pretrained_offline
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    url = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.url
    (folder / Path(url).name).write_bytes(b"only its presence is checked")
    assert describe("squeezenet1_1").pretrained_offline

    # timm: the Hugging Face cache layout
    from timm.models import get_pretrained_cfg

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert not pretrained_available_offline("timm", "ghostnet_100")
    repo = get_pretrained_cfg("ghostnet_100").hf_hub_id
    snap = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text(commit)
    (snap / "snapshots" / commit).mkdir(parents=True)
    (snap / "snapshots" / commit / "model.safetensors").write_bytes(b"x")
    assert pretrained_available_offline("timm", "ghostnet_100")
    assert describe("ghostnet").pretrained_offline


# ---------------------------------------------------------------------------- measure
def test_time_call_budget() -> None:
    from vitrina.engine.timing import time_call

    calls = []

    def fast() -> None:
        calls.append(1)

    t = time_call(fast, min_time=0.0, max_time=10.0)
    median, runs = t.seconds, t.runs
    assert runs == 3 and len(calls) == 4 and median >= 0  # warm-up + the minimum of 3

    def slow() -> None:
        import time

        time.sleep(0.02)

    t = time_call(slow, min_time=5.0, max_time=0.01)
    median, runs = t.seconds, t.runs
    assert runs == 1 and median >= 0.02  # over budget after one timed run

    calls.clear()
    t = time_call(fast, min_time=0.05, max_time=10.0)
    median, runs = t.seconds, t.runs
    assert runs > 3  # kept going until min_time


def test_measure_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"threads": 1, "throughput_batch": 8, "min_time": 0.02, "max_time": 0.5}
    t = measure("lenet5", ("eager",), **kw)["eager"]
    assert t.latency_ms > 0 and t.throughput > 0
    assert t.latency_runs >= 1 and t.throughput_runs >= 1 and t.threads == 1
    assert zoo_measure.is_measured("lenet5", ("eager",), threads=1, throughput_batch=8)
    assert not zoo_measure.is_measured("lenet5", ("eager",), threads=1, throughput_batch=9)

    from vitrina.engine import BACKENDS

    def forbidden(*a, **k):
        raise AssertionError("cached measurements must not build or run the model")

    monkeypatch.setattr(zoo, "create", forbidden)
    monkeypatch.setattr(BACKENDS, "get", lambda name: forbidden)
    assert measure("lenet5", ("eager",), **kw)["eager"] == t
    with pytest.raises(VitrinaError, match="must not"):
        measure("lenet5", ("eager",), refresh=True, **kw)
    cached = json.loads(zoo_measure._measure_path().read_text())
    assert cached["machine"]["cores"] >= 1
    assert any(k.startswith("vitrina/lenet5|eager|batch8|threads1") for k in cached["cells"])


def test_measure_rejects_unknown_backend() -> None:
    with pytest.raises(UnknownNameError, match="did you mean"):
        measure("lenet5", ("eagr",))


def test_plot_zoo(tmp_path: Path) -> None:
    entries = [describe(n) for n in ("squeezenet1_1", "mobilenet_v3_small", "lenet5")]
    out = plot_zoo(entries, tmp_path / "top1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entries[2].timings["eager"] = zoo.Timing("eager", 0.5, 10, 900.0, 5, 1)
    plot_zoo(entries, tmp_path / "speed.png", y="throughput")
    assert (tmp_path / "speed.png").stat().st_size > 1000
    with pytest.raises(VitrinaError, match="nothing to plot"):
        plot_zoo(entries[2:], tmp_path / "none.png", y="top1")  # lenet5 has no top-1


# ---------------------------------------------------------------------------- CLI
def test_cli_classic_max_mb_json(capsys) -> None:
    code, o, _ = run(capsys, "zoo", "--max-mb", "20", "--json")
    assert code == 0
    rows = json.loads(o)
    names = [r["name"] for r in rows]
    listed = set(zoo.BEFORE_CNNS) | set(CLASSIC)
    assert set(names) < listed and all(r["size_mb_fp32"] <= 20 for r in rows)
    assert {"lenet5", "squeezenet1_1", "mobilenet_v2", "efficientnet_lite0"} <= set(names)
    # The Classic family (models before CNNs) is tiny: all of it is under 20 MB.
    assert set(zoo.BEFORE_CNNS) <= set(names)
    for name in zoo.BEFORE_CNNS:
        row = rows[names.index(name)]
        assert row["family"] == "Classic" and row["pretrained_offline"] is False
    assert "resnet18" not in names and "vgg16" not in names
    lite0 = rows[names.index("efficientnet_lite0")]
    assert lite0["pretrained_offline"] is True and lite0["family"] == "EfficientNet-Lite"
    sizes = [r["size_mb_fp32"] for r in rows]
    assert sizes == sorted(sizes)


def test_cli_pretrained_only_and_pattern(capsys) -> None:
    code, o, _ = run(capsys, "zoo", "*lite0*", "--pretrained-only", "--json")
    assert code == 0
    assert [r["name"] for r in json.loads(o)] == ["efficientnet_lite0"]

    code, o, _ = run(capsys, "zoo", "mobilenet_v*", "--max-mb", "20", "--json")
    assert code == 0
    got = {r["name"]: r["size_mb_fp32"] for r in json.loads(o)}
    assert set(got) == {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"}  # v3_large: 22 MB


def test_cli_csv_and_markdown(capsys) -> None:
    code, o, _ = run(capsys, "zoo", "mobilenet_v3*", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(o)))
    assert [r["name"] for r in rows] == ["mobilenet_v3_small", "mobilenet_v3_large"]
    assert rows[0]["family"] == "MobileNetV3" and rows[0]["input_size"] == "224x224"
    assert int(rows[0]["params"]) == describe("mobilenet_v3_small").params
    assert float(rows[1]["top1"]) == pytest.approx(75.274)

    code, o, _ = run(capsys, "zoo", "mobilenet_v3*", "--markdown")
    assert code == 0
    lines = o.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["name", "family", "year"] and "GFLOPs" in header
    assert set(lines[1]) <= set("|-")
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [c[0] for c in cells] == ["mobilenet_v3_small", "mobilenet_v3_large"]
    assert all(len(c) == len(header) for c in cells)

    code, o, _ = run(capsys, "zoo", "mobilenet_v3*")  # the rich table
    assert code == 0 and "mobilenet_v3_small" in o and "MobileNetV3" in o


def test_cli_errors_are_one_line(capsys) -> None:
    code, _, e = run(capsys, "zoo", "--family", "resnets")
    assert code == 1
    one_line_error(e, "unknown family 'resnets'", "ResNet", "GhostNet")
    code, _, e = run(capsys, "zoo", "lenet*", "--measure", "--backends", "eagr")
    assert code == 2  # not a backend: a usage error, with the closest names
    usage_error(e, "'eagr' is not one of", "did you mean: eager")
    code, _, e = run(capsys, "zoo", "resnet1O")
    assert code == 1
    one_line_error(e, "resnet1O", "did you mean")
    code, _, e = run(capsys, "zoo", "lenet*", "--json", "--csv")
    assert code == 1
    one_line_error(e, "choose one")


def test_cli_family_and_empty(capsys) -> None:
    code, o, _ = run(capsys, "zoo", "--family", "mobilenetv3", "--json")
    assert code == 0
    assert [r["name"] for r in json.loads(o)] == ["mobilenet_v3_small", "mobilenet_v3_large"]
    code, o, e = run(capsys, "zoo", "no_such_net_*")
    assert code == 0 and o == ""
    assert "no model matches" in e
    code, o, e = run(capsys, "zoo", "*resnet*", "--limit", "2", "--json")
    assert code == 0 and len(json.loads(o)) == 2
    assert "describing the first 2" in e


def test_cli_measure_and_plot(capsys, tmp_path: Path) -> None:
    png = tmp_path / "speed.png"
    code, o, e = run(capsys, "zoo", "lenet*", "--measure", "--backends", "eager", "--plot", png)
    assert code == 0 and f"wrote {png}" in e
    assert "ms@1 eager" in o and "img/s@32 eager" in o and "lenet5" in o
    assert png.read_bytes()[:4] == b"\x89PNG"

    code, o, _ = run(capsys, "zoo", "lenet*", "--measure", "--backends", "eager", "--json")
    assert code == 0  # from the cache now
    timing = json.loads(o)[0]["timings"]["eager"]
    assert timing["latency_ms"] > 0 and timing["throughput"] > 0 and timing["threads"] == 1


def test_cli_help_has_the_example(capsys) -> None:
    code, o, _ = run(capsys, "zoo", "--help")
    assert code == 0
    assert "vitrina zoo --max-mb 20 --pretrained-only" in o
    code, o, _ = run(capsys, "--help")
    assert "zoo" in o


def test_measurement_backends_resolve_auto_and_warn_about_emulated_bf16(monkeypatch) -> None:
    import vitrina.engine as engine
    from vitrina.zoo import measurement_backends

    first_guess = engine.resolve_backend("auto", torch.device("cpu"))  # this CPU, as it is
    assert measurement_backends(["auto", first_guess]) == ([first_guess], [])
    monkeypatch.setattr(engine, "bf16_supported", lambda device: False)
    backends, notes = measurement_backends(["eager", " bf16", "eager"])
    assert backends == ["eager", "bf16"]
    assert len(notes) == 1 and "emulated" in notes[0]
    monkeypatch.setattr(engine, "bf16_supported", lambda device: True)
    assert measurement_backends(["bf16"]) == (["bf16"], [])
    with pytest.raises(VitrinaError, match="no backends"):
        measurement_backends([" "])
