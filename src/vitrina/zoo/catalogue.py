"""The zoo's catalogue: the classic architectures by name, with what they cost and score.

>>> from vitrina import zoo
>>> zoo.describe("mobilenet_v2").size_mb_fp32  # doctest: +SKIP
14.2...

:data:`CLASSIC` is the list of the classic CNN review (LeNet-5 to GhostNet), each creatable by
that one name. :func:`describe` gives a model's static figures (parameters, size, FLOPs, input
size, ImageNet top-1 when the weights' metadata has it, whether ImageNet weights are on this
machine). Static descriptions are cached as JSON under ``$VITRINA_CACHE/zoo/`` per library
versions, so a second listing is instant. Nothing here downloads.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitrina.errors import VitrinaError
from vitrina.io import atomic_write_text
from vitrina.io import cache_dir as io_cache_dir
from vitrina.models import VitrinaModel, create
from vitrina.models import weights as W
from vitrina.models.registry import _display_name, resolve_name

__all__ = [
    "BEFORE_CNNS",
    "CLASSIC",
    "FAMILIES",
    "OTHER",
    "Family",
    "Paper",
    "Timing",
    "ZooEntry",
    "cache_dir",
    "count_flops",
    "describe",
    "family_names",
    "family_of",
    "is_described",
    "paper_of",
]

#: The classic review, in order: each name builds with ``vitrina.models.create(name)``.
CLASSIC: tuple[str, ...] = (
    "lenet5",
    "alexnet",
    "vgg16",
    "googlenet",
    "inception_v3",
    "resnet18",
    "resnet50",
    "resnext50",
    "inception_resnet_v2",
    "xception",
    "densenet121",
    "se_resnet50",
    "squeezenet1_1",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "shufflenet_v2",
    "mnasnet",
    "efficientnet_b0",
    "efficientnet_lite0",
    "ghostnet",
)

#: The models before CNNs (the "Classic" family), listed before :data:`CLASSIC` by default:
#: a perceptron on pixels, HOG + linear SVM, SIFT bag of visual words + linear SVM.
BEFORE_CNNS: tuple[str, ...] = ("mlp_pixels", "hog_svm", "sift_bovw_svm")

_SCHEMA = 1  # bump when the cached fields change


# ---------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Paper:
    """The publication a model comes from: its ``year`` (first publication, arXiv preprint or
    venue, whichever came first) and its ``title`` (with authors where the title alone is
    ambiguous)."""

    year: int
    title: str


@dataclass(frozen=True)
class Family:
    """An architecture family: the paper that introduced it and the names that belong to it.

    ``year`` is the year of first publication (arXiv preprint or venue, whichever came
    first). ``patterns`` are shell wildcards over model names; see :func:`family_of`.
    ``papers``: members with a paper of their own (pattern -> :class:`Paper`), for a family
    that groups models of different origins (the Classic family: a 1958 perceptron, 2004 bags
    of visual words, 2005 HOG); :func:`paper_of` reads it.
    """

    name: str
    year: int
    paper: str
    patterns: tuple[str, ...]
    papers: tuple[tuple[str, Paper], ...] = ()


#: Hand-written metadata. Order matters: the first family with a matching pattern wins, so
#: specific patterns (``seresnet*``) come before general ones (``resnet*``).
FAMILIES: tuple[Family, ...] = (
    Family(
        "Classic",
        1958,
        "The Perceptron (Rosenblatt 1958); Visual Categorization with Bags of Keypoints "
        "(Csurka et al. 2004, on Lowe's SIFT); Histograms of Oriented Gradients for Human "
        "Detection (Dalal & Triggs 2005)",
        BEFORE_CNNS,
        papers=(
            (
                "mlp_pixels",
                Paper(
                    1958,
                    "The Perceptron: A Probabilistic Model for Information Storage and "
                    "Organization in the Brain (Rosenblatt 1958)",
                ),
            ),
            (
                "hog_svm",
                Paper(
                    2005,
                    "Histograms of Oriented Gradients for Human Detection (Dalal & Triggs 2005)",
                ),
            ),
            (
                "sift_bovw_svm",
                Paper(
                    2004,
                    "Visual Categorization with Bags of Keypoints (Csurka et al. 2004), on "
                    "Distinctive Image Features from Scale-Invariant Keypoints (Lowe 1999/2004)",
                ),
            ),
        ),
    ),
    Family("LeNet", 1998, "Gradient-Based Learning Applied to Document Recognition", ("lenet*",)),
    Family(
        "AlexNet",
        2012,
        "ImageNet Classification with Deep Convolutional Neural Networks",
        ("alexnet",),
    ),
    Family(
        "VGG",
        2014,
        "Very Deep Convolutional Networks for Large-Scale Image Recognition",
        ("vgg*",),
    ),
    Family("RepVGG", 2021, "RepVGG: Making VGG-style ConvNets Great Again", ("repvgg*",)),
    Family("GoogLeNet", 2014, "Going Deeper with Convolutions", ("googlenet", "inception_v1*")),
    Family(
        "Inception-v3",
        2015,
        "Rethinking the Inception Architecture for Computer Vision",
        ("inception_v3*",),
    ),
    Family(
        "Inception-v4",
        2016,
        "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
        ("inception_v4*",),
    ),
    Family(
        "Inception-ResNet",
        2016,
        "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
        ("inception_resnet*",),
    ),
    Family(
        "Xception",
        2016,
        "Xception: Deep Learning with Depthwise Separable Convolutions",
        ("xception", "legacy_xception"),
    ),
    Family(
        "Aligned Xception",
        2018,
        "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation",
        ("xception41*", "xception65*", "xception71*"),
    ),
    Family(
        "SENet",
        2017,
        "Squeeze-and-Excitation Networks",
        ("se_resne*", "seresne*", "senet*", "legacy_senet*", "legacy_seresne*"),
    ),
    Family(
        "ResNeXt",
        2016,
        "Aggregated Residual Transformations for Deep Neural Networks",
        ("resnext*",),
    ),
    Family("Wide ResNet", 2016, "Wide Residual Networks", ("wide_resnet*",)),
    Family("ResNeSt", 2020, "ResNeSt: Split-Attention Networks", ("resnest*",)),
    Family("ResNet v2", 2016, "Identity Mappings in Deep Residual Networks", ("resnetv2*",)),
    Family("ResNet", 2015, "Deep Residual Learning for Image Recognition", ("resnet*",)),
    Family("DenseNet", 2016, "Densely Connected Convolutional Networks", ("densenet*",)),
    Family(
        "SqueezeNet",
        2016,
        "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
        ("squeezenet*",),
    ),
    Family(
        "MobileNet",
        2017,
        "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
        ("mobilenet_v1*", "mobilenetv1*"),
    ),
    Family(
        "MobileNetV2",
        2018,
        "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
        ("mobilenet_v2*", "mobilenetv2*"),
    ),
    Family(
        "MobileNetV3",
        2019,
        "Searching for MobileNetV3",
        ("mobilenet_v3*", "mobilenetv3*"),
    ),
    Family(
        "MobileNetV4",
        2024,
        "MobileNetV4: Universal Models for the Mobile Ecosystem",
        ("mobilenetv4*",),
    ),
    Family(
        "ShuffleNetV2",
        2018,
        "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
        ("shufflenet_v2*",),
    ),
    Family(
        "MnasNet",
        2018,
        "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
        ("mnasnet*", "semnasnet*"),
    ),
    Family(
        "EfficientNet-Lite",
        2020,
        "Higher accuracy on vision models with EfficientNet-Lite (TensorFlow blog; no paper)",
        ("efficientnet_lite*",),
    ),
    Family(
        "EfficientNetV2",
        2021,
        "EfficientNetV2: Smaller Models and Faster Training",
        ("efficientnet_v2*", "efficientnetv2*"),
    ),
    Family(
        "EfficientNet",
        2019,
        "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ("efficientnet_*",),
    ),
    Family(
        "GhostNetV2",
        2022,
        "GhostNetV2: Enhance Cheap Operation with Long-Range Attention",
        ("ghostnetv2*",),
    ),
    Family(
        "GhostNetV3",
        2024,
        "GhostNetV3: Exploring the Training Strategies for Compact Models",
        ("ghostnetv3*",),
    ),
    Family("GhostNet", 2019, "GhostNet: More Features from Cheap Operations", ("ghostnet_*",)),
    Family("RegNet", 2020, "Designing Network Design Spaces", ("regnet*",)),
    Family(
        "ViT",
        2020,
        "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
        ("vit_*",),
    ),
    Family(
        "DeiT",
        2020,
        "Training data-efficient image transformers & distillation through attention",
        ("deit_*", "deit3_*"),
    ),
    Family(
        "Swin Transformer V2",
        2021,
        "Swin Transformer V2: Scaling Up Capacity and Resolution",
        ("swin_v2*", "swinv2*"),
    ),
    Family(
        "Swin Transformer",
        2021,
        "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
        ("swin_*",),
    ),
    Family(
        "ConvNeXt V2",
        2023,
        "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
        ("convnextv2*",),
    ),
    Family("ConvNeXt", 2022, "A ConvNet for the 2020s", ("convnext_*",)),
    Family("MaxViT", 2022, "MaxViT: Multi-Axis Vision Transformer", ("maxvit*",)),
)

OTHER = "other"
_STRIP_PREFIXES = ("tf_", "legacy_", "gluon_", "torchvision/", "timm/", "vitrina/")


def _candidates(name: str) -> list[str]:
    """``name`` and what it is without pretrained tag, source prefix and porting prefixes."""
    out = [name.lower()]
    base: str | None = out[0].split(".", 1)[0]
    while base is not None:
        out.append(base)
        base = next((base[len(p) :] for p in _STRIP_PREFIXES if base.startswith(p)), None)
    return list(dict.fromkeys(out))


def family_of(name: str) -> Family | None:
    """The family of model ``name`` (an alias, a library name, ``timm/NAME.tag``...), or None.

    Both the name and the library architecture it resolves to are matched (``se_resnet50``
    and ``seresnet50`` are both SENet); the porting prefixes ``tf_``/``legacy_`` are ignored.
    """
    names = _candidates(name)
    with contextlib.suppress(VitrinaError):
        names += _candidates(resolve_name(name)[1])
    for fam in FAMILIES:
        if any(fnmatch.fnmatchcase(n, p) for p in fam.patterns for n in names):
            return fam
    return None


def paper_of(name: str) -> Paper | None:
    """The paper model ``name`` comes from: its own where its family lists one
    (:attr:`Family.papers`), else its family's; None for a model of no known family."""
    fam = family_of(name)
    if fam is None:
        return None
    names = _candidates(name)
    for pattern, paper in fam.papers:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return paper
    return Paper(fam.year, fam.paper)


def family_names() -> list[str]:
    """Every family name, in table order, then ``"other"``."""
    return [f.name for f in FAMILIES] + [OTHER]


# ---------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Timing:
    """Speed of one model with one backend on this machine, at its native input size.

    ``latency_ms``: median milliseconds per batch of ``latency_batch`` (1) images.
    ``throughput``: images per second, from the median time per batch of
    ``throughput_batch`` (32) images. ``*_runs``: how many timed runs each median is over.
    """

    backend: str
    latency_ms: float
    latency_runs: int
    throughput: float
    throughput_runs: int
    threads: int
    latency_batch: int = 1
    throughput_batch: int = 32


@dataclass
class ZooEntry:
    """What a model costs and scores. Sizes are in MB of 10^6 bytes.

    ``params``: number of parameters of the network as :func:`vitrina.models.create` builds
    it with its default head (1000 ImageNet classes; 10 for lenet5/tutorial_cnn; googlenet and
    inception_v3 without their training-only auxiliary heads).

    ``size_mb_fp32``: every parameter at 4 bytes plus the buffers (batch-norm statistics) at
    their own size. ``size_mb_bf16``: floating-point parameters and buffers at 2 bytes.
    ``size_mb_int8``: the rule of weight-only int8 quantization: weight tensors (2-D and up:
    convolution and linear kernels) at 1 byte, biases and normalization parameters and the
    buffers at fp32. Scales/zero points are not counted.

    ``gflops``: floating-point operations of one forward pass of one image at
    ``input_size``, as ``torch.utils.flop_counter.FlopCounterMode`` counts them: 2 per
    multiply-accumulate (GFLOPs = 2 x GMACs) in convolutions, matrix products and attention;
    element-wise operations (activations, normalization, pooling) are not counted.

    ``top1``: ImageNet-1k top-1 accuracy (%) of the default pretrained weights as recorded in
    the weights' metadata (torchvision); ``None`` where the library records none (timm, own).
    ``pretrained_offline``: ImageNet weights are on this machine (no download needed).
    ``timings``: per backend, filled by :func:`measure` (empty when not measured).
    """

    name: str
    arch: str
    source: str
    family: str
    year: int | None
    paper: str | None
    params: int
    size_mb_fp32: float
    size_mb_bf16: float
    size_mb_int8: float
    gflops: float
    input_size: tuple[int, int]
    channels: int
    top1: float | None
    pretrained_offline: bool
    timings: dict[str, Timing] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``timings`` as ``{backend: {...}}``."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


# ---------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """``$VITRINA_CACHE/zoo`` (default ``~/.cache/vitrina/zoo``), resolved now."""
    return io_cache_dir("zoo")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "unknown"


@cache
def _versions() -> dict[str, str]:
    import timm
    import torchvision

    from vitrina._version import __version__

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "vitrina": __version__,
    }


def _static_path(source: str, arch: str) -> Path:
    v = _versions()
    folder = _slug(
        f"describe-v{_SCHEMA}-torch{v['torch']}-tv{v['torchvision']}-timm{v['timm']}"
        f"-vitrina{v['vitrina']}"
    )
    return cache_dir() / folder / f"{_slug(source)}--{_slug(arch)}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or damaged: recompute
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except (OSError, VitrinaError):
        pass  # a read-only or full cache only costs speed


_STATIC_KEYS = {
    "params": int,
    "size_mb_fp32": float,
    "size_mb_bf16": float,
    "size_mb_int8": float,
    "gflops": float,
    "input_size": list,
    "channels": int,
}


def _valid_static(d: dict[str, Any] | None) -> bool:
    return (
        d is not None
        and d.get("schema") == _SCHEMA
        and all(isinstance(d.get(k), t) for k, t in _STATIC_KEYS.items())
        and (d.get("top1") is None or isinstance(d["top1"], int | float))
    )


# ---------------------------------------------------------------------------- counting
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` as ``FlopCounterMode`` counts them (2 per multiply-accumulate)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _sizes(model: nn.Module) -> tuple[int, float, float, float]:
    """``(params, bytes fp32, bytes bf16, bytes int8)`` by the rules of :class:`ZooEntry`."""
    params = fp32 = bf16 = int8 = 0
    for p in model.parameters():
        n = p.numel()
        params += n
        fp32 += 4 * n
        bf16 += 2 * n
        int8 += n if p.dim() >= 2 else 4 * n
    for b in model.buffers():
        n = b.numel()
        if b.is_floating_point():
            fp32 += 4 * n
            bf16 += 2 * n
            int8 += 4 * n
        else:  # e.g. num_batches_tracked (int64): kept as is in every format
            size = n * b.element_size()
            fp32 += size
            bf16 += size
            int8 += size
    return params, fp32, bf16, int8


def _build(name: str, device: torch.device) -> VitrinaModel:
    """Random-init model with its default head; on ``meta`` no memory is allocated."""
    with device:
        return create(name, weights=None).eval()


def _one_line(e: BaseException | None) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _measure_static(name: str) -> dict[str, Any]:
    """Parameters, sizes and FLOPs. Built on the ``meta`` device (shapes only, no memory for
    weights, no time for random init); on the CPU if the network does not run there."""
    failure: Exception | None = None
    for device in (torch.device("meta"), torch.device("cpu")):
        try:
            model = _build(name, device)
            h, w = model.preprocess.input_size
            x = torch.zeros(1, model.preprocess.channels, h, w, device=device)
            flops = count_flops(model, x)
        except VitrinaError:
            raise  # the name or the network is unusable as a classifier: same on any device
        except Exception as e:
            failure = e
            continue
        params, fp32, bf16, int8 = _sizes(model)
        return {
            "schema": _SCHEMA,
            "params": params,
            "size_mb_fp32": fp32 / 1e6,
            "size_mb_bf16": bf16 / 1e6,
            "size_mb_int8": int8 / 1e6,
            "gflops": flops / 1e9,
            "input_size": list(model.preprocess.input_size),
            "channels": int(model.preprocess.channels),
            "counted_on": device.type,
        }
    raise VitrinaError(f"{name}: cannot be built and run ({_one_line(failure)})") from failure


def _top1(source: str, arch: str) -> float | None:
    """ImageNet-1k top-1 (%) of the default weights, from torchvision's weights metadata."""
    if source != "torchvision":
        return None  # timm and the own models ship no accuracy metadata
    import torchvision

    try:
        meta = torchvision.models.get_model_weights(arch).DEFAULT.meta
        return float(meta["_metrics"]["ImageNet-1K"]["acc@1"])
    except (KeyError, ValueError, AttributeError, TypeError):
        return None


# ---------------------------------------------------------------------------- describe
def is_described(name: str) -> bool:
    """Whether :func:`describe` of ``name`` is answered from the cache (no model built)."""
    source, arch = resolve_name(name)
    return _valid_static(_read_json(_static_path(source, arch)))


def _static(name: str, source: str, arch: str, refresh: bool = False) -> dict[str, Any]:
    path = _static_path(source, arch)
    static = None if refresh else _read_json(path)
    if static is None or not _valid_static(static):
        static = _measure_static(name)
        static["top1"] = _top1(source, arch)
        static["versions"] = _versions()
        _write_json(path, static)
    return static


def describe(name: str, *, refresh: bool = False) -> ZooEntry:
    """The static figures of model ``name`` (see :class:`ZooEntry`), cached per library
    versions under :func:`cache_dir`; ``refresh`` recomputes. Builds the network without
    weights (on the ``meta`` device where possible) and never downloads.

    Raises:
        UnknownNameError: unknown name (with suggestions).
        VitrinaError: the network cannot be built or run as a classifier.
    """
    source, arch = resolve_name(name)
    static = _static(name, source, arch, refresh)
    fam = family_of(name)
    paper = paper_of(name)
    h, w = static["input_size"]
    return ZooEntry(
        name=name,
        arch=_display_name(source, arch),
        source=source,
        family=fam.name if fam else OTHER,
        year=paper.year if paper else None,
        paper=paper.title if paper else None,
        params=int(static["params"]),
        size_mb_fp32=float(static["size_mb_fp32"]),
        size_mb_bf16=float(static["size_mb_bf16"]),
        size_mb_int8=float(static["size_mb_int8"]),
        gflops=float(static["gflops"]),
        input_size=(int(h), int(w)),
        channels=int(static["channels"]),
        top1=None if static.get("top1") is None else float(static["top1"]),
        pretrained_offline=W.pretrained_available_offline(source, arch),
    )
