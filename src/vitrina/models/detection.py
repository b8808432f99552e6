"""Object detectors: torchvision's detection models over any zoo backbone with a feature pyramid.

A :class:`Detector` is torchvision's Faster R-CNN, RetinaNet, FCOS or SSDlite (:data:`HEADS`)
on top of a zoo classifier's feature maps at strides 8, 16 and 32 (its ImageNet weights, e.g.
EfficientNet-Lite0's, which ship offline) joined by torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork`. It follows the engine's detector contract
(``docs/architecture.md``, "How a detector plugs in"):

- ``preprocess``: the fixed network input (``input_size``, any multiple of 32, not square
  necessarily) and the backbone's normalisation; photos are letterboxed into it by the
  engine's task, so torchvision's own resize and normalisation are switched off here
  (:class:`_Batched`): the network sees exactly the letterboxed tensor every backend sees.
- ``boxes(x)``: per input image an ``(N, 6)`` tensor ``[x1, y1, x2, y2, score, label]`` in input
  pixels after torchvision's score threshold and per-class non-maximum suppression (so every
  backend returns final boxes). Labels are 0-based class indices (the background class of
  Faster R-CNN and SSD, torchvision's 0, is shifted away here).
- ``losses(x, targets)``: torchvision's training losses (a dict of scalars) for a batch of
  letterboxed images and their targets (``boxes`` in input pixels, 0-based ``labels``).
- ``onnx_single_image("boxes")``: the module ONNX export traces (one image in, its ``(N, 6)``
  boxes out): torchvision's detectors export one image at a time.

What the network is made of is a :class:`DetectorSpec` (JSON in the run folder), so
``vitrina.runs.build_model`` rebuilds the same network from a run without probing anything.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from vitrina.errors import VitrinaError
from vitrina.models.preprocess import Preprocess
from vitrina.registry import Registry

__all__ = [
    "HEADS",
    "STRIDES",
    "Detector",
    "DetectorSpec",
    "create_detector",
    "feature_nodes",
    "set_drop_path",
]

#: The backbone strides whose feature maps feed the pyramid (C3, C4, C5).
STRIDES = (8, 16, 32)

#: Detection heads by name: ``builder(backbone_with_fpn, spec) -> torchvision detector``.
HEADS: Registry[Callable[[nn.Module, DetectorSpec], nn.Module]] = Registry("detection head")
#: Heads whose classifier has a background class 0 (softmax: Faster R-CNN, SSD): their
#: labels are the object classes shifted by one. RetinaNet and FCOS score each class with a
#: sigmoid and have none.
WITH_BACKGROUND = {"fasterrcnn", "ssdlite"}
#: Heads whose boxes are scored at ``DetectorSpec.score_temperature`` (Faster R-CNN's softmax
#: box head, :class:`~vitrina.models.roi_heads.SmoothedRoIHeads`); the others take only 1.
TEMPERED_HEADS = frozenset({"fasterrcnn"})


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector network is made of (saved in the run folder as ``config.detector``).

    ``head``: a name in :data:`HEADS`; ``backbone``: any zoo classifier name
    (``vitrina.models.create``); ``num_classes``: object classes (no background);
    ``input_size``: ``(height, width)`` of the letterboxed input, multiples of 32;
    ``fpn_channels``: width of the feature pyramid; ``return_nodes``/``in_channels``: the
    backbone's layers at strides 8, 16, 32 and their widths (found by :func:`feature_nodes`
    when empty); ``score_thresh``, ``nms_thresh``, ``max_detections``: torchvision's
    post-processing (what every backend returns); ``score_temperature``: Faster R-CNN's class
    logits are divided by it before the softmax that scores its boxes (1: torchvision's scores;
    see :class:`~vitrina.models.roi_heads.SmoothedRoIHeads`).
    """

    head: str = "fasterrcnn"
    backbone: str = "efficientnet_lite0"
    num_classes: int = 1
    input_size: tuple[int, int] = (320, 320)
    fpn_channels: int = 128
    return_nodes: tuple[str, ...] = ()
    in_channels: tuple[int, ...] = ()
    #: the lowest score a box is kept at: COCO's mAP counts every box (a box of the right
    #: class at a low score still adds recall), so the network answers down to 0.001 and
    #: ``predict`` shows those above its ``--min-score``. Runs made before 5 Dec 2026: 0.05.
    score_thresh: float = 0.001
    nms_thresh: float = 0.5
    max_detections: int = 100
    #: below 1 sharpens the class scores of a softmax box head (Faster R-CNN's) at inference;
    #: training is unchanged. Runs made before 5 Dec 2026: 1.
    score_temperature: float = 1.0
    #: stochastic depth in training (Huang et al. 2016; timm's ``drop_path_rate``): each of
    #: the backbone's residual blocks skipped for a photo with a probability rising from 0 at
    #: the first block to this at the last; 0: none. Inference (every backend) is unchanged.
    drop_path: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.input_size)
        object.__setattr__(self, "input_size", (h, w))
        object.__setattr__(self, "return_nodes", tuple(self.return_nodes))
        object.__setattr__(self, "in_channels", tuple(int(c) for c in self.in_channels))
        if self.num_classes < 1:
            raise VitrinaError(f"a detector needs at least one class, got {self.num_classes}")
        if not 0 < self.score_temperature <= 4:
            raise VitrinaError(
                f"score temperature {self.score_temperature:g} is out of range (0, 4]"
            )
        if self.score_temperature != 1 and self.head not in TEMPERED_HEADS:
            raise VitrinaError(
                f"a score temperature applies to Faster R-CNN's softmax box head only, not to "
                f"{self.head!r} (leave it at 1)"
            )
        if h < 64 or w < 64 or h % 32 or w % 32:
            raise VitrinaError(
                f"detector input size {h}x{w} (HEIGHTxWIDTH): each side must be a multiple "
                "of 32, at least 64"
            )

    @property
    def arch(self) -> str:
        """The name runs, caches and messages use: ``<head>_<backbone>``."""
        return f"{self.head}_{self.backbone.replace('/', '-')}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["return_nodes"] = list(self.return_nodes)
        d["in_channels"] = list(self.in_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSpec:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        if "input_size" in kw:
            kw["input_size"] = tuple(kw["input_size"])
        return cls(**kw)


# ---------------------------------------------------------------------------- the backbone
def _fx():
    from timm.models import create_feature_extractor, get_graph_node_names

    return get_graph_node_names, create_feature_extractor


def feature_nodes(net: nn.Module, channels: int = 3) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The layers of a classifier network whose outputs are its feature maps at strides 8, 16
    and 32 (the last layer at each stride), and their widths.

    timm networks say it themselves (``feature_info``); for others (torchvision's) the FX graph
    is traced on a 256x256 input and the last 4-D node at each stride is taken (a ResNet's
    ``layer2``..``layer4``, a MobileNet's last block of each stage).
    """
    info = getattr(net, "feature_info", None)
    if info is not None:
        try:
            entries = [(str(i["module"]), int(i["num_chs"]), int(i["reduction"])) for i in info]
        except (TypeError, KeyError):
            entries = []
        picked = {r: (m, c) for m, c, r in entries if r in STRIDES}
        if len(picked) == len(STRIDES):
            return (
                tuple(picked[s][0] for s in STRIDES),
                tuple(picked[s][1] for s in STRIDES),
            )
    get_graph_node_names, create_feature_extractor = _fx()
    was_training = net.training
    net.eval()
    try:
        _, nodes = get_graph_node_names(net)
        extractor = create_feature_extractor(net, return_nodes=list(nodes))
        side = 256
        with torch.no_grad():
            outs = extractor(torch.zeros(1, channels, side, side))
    except Exception as e:
        raise VitrinaError(
            f"cannot find the feature maps of this backbone ({type(e).__name__}: {e}); "
            "use a convolutional classifier (efficientnet_lite0, resnet50, mobilenet_v3_large...)"
        ) from None
    finally:
        net.train(was_training)
    last: dict[int, tuple[str, int]] = {}
    for name in nodes:
        y = outs.get(name)
        if not isinstance(y, torch.Tensor) or y.dim() != 4:
            continue
        for s in STRIDES:
            if tuple(y.shape[-2:]) == (math.ceil(side / s), math.ceil(side / s)):
                last[s] = (name, int(y.shape[1]))
    missing = [s for s in STRIDES if s not in last]
    if missing:
        raise VitrinaError(
            f"this backbone has no feature map at stride {missing[0]} (a detector needs strides "
            "8, 16 and 32: use a convolutional classifier)"
        )
    return tuple(last[s][0] for s in STRIDES), tuple(last[s][1] for s in STRIDES)


class PyramidBackbone(nn.Module):
    """A classifier's feature maps at strides 8, 16, 32 (``body``, an FX feature extractor)
    joined by a feature pyramid (``fpn``) with extra coarser levels: what torchvision's
    ``BackboneWithFPN`` is for its own ResNets and MobileNets, for any traceable network."""

    def __init__(
        self, body: nn.Module, in_channels: tuple[int, ...], out_channels: int, extra: str
    ) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
            LastLevelP6P7,
        )

        self.body = body
        # Features computed elsewhere (training on cached features, see ``given_features``):
        # a plain attribute, never part of the state dict.
        self.given: dict[str, torch.Tensor] | None = None
        blocks = (
            LastLevelP6P7(out_channels, out_channels) if extra == "p6p7" else LastLevelMaxPool()
        )
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.given if self.given is not None else self.body(x)
        # torchvision's names for pyramid levels: "0", "1", "2", then "pool" or "p6", "p7"
        return self.fpn(OrderedDict((str(i), feats[f"c{i}"]) for i in range(len(feats))))


def _backbone(spec: DetectorSpec, pretrained: bool, extra: str) -> tuple[nn.Module, Preprocess]:
    from vitrina.models.registry import create

    base = create(spec.backbone, weights="imagenet" if pretrained else None)
    if base.preprocess.channels != 3:
        raise VitrinaError(f"backbone {spec.backbone!r} takes grey images; a detector needs RGB")
    net = base.net
    if spec.drop_path:
        set_drop_path(net, spec.drop_path, spec.backbone)
    nodes, channels = spec.return_nodes, spec.in_channels
    if not nodes:
        nodes, channels = feature_nodes(net)
    _, create_feature_extractor = _fx()
    net.eval()
    with warnings.catch_warnings():
        # stochastic depth adds nodes to the training graph only; the returned ones are in both
        warnings.filterwarnings("ignore", message=".*are a subsequence of those obtained in train")
        body = create_feature_extractor(net, return_nodes={n: f"c{i}" for i, n in enumerate(nodes)})
    pre = Preprocess(
        input_size=spec.input_size,
        mean=base.preprocess.mean,
        std=base.preprocess.std,
        crop_pct=1.0,
        interpolation="bilinear",
    )
    backbone = PyramidBackbone(body, channels, spec.fpn_channels, extra)
    backbone.return_nodes, backbone.in_channels = nodes, channels  # type: ignore[assignment]
    backbone.weights_origin = base.weights_origin  # type: ignore[assignment]
    return backbone, pre


def set_drop_path(net: nn.Module, rate: float, name: str = "the backbone") -> int:
    """Stochastic depth in the residual blocks of a timm network (the blocks with a
    ``drop_path`` module and a skip connection), as ``timm.create_model(...,
    drop_path_rate=rate)`` sets it: from 0 at the first block linearly to ``rate`` at the
    last. Returns how many blocks were set.

    Raises:
        VitrinaError: ``net`` has no such blocks (a torchvision network, a plain CNN).
    """
    from timm.layers import DropPath

    blocks = [m for m in net.modules() if hasattr(m, "drop_path") and getattr(m, "has_skip", True)]
    if not blocks:
        raise VitrinaError(
            f"--drop-path: {name} has no residual blocks with stochastic depth (timm's "
            "drop_path); use a timm backbone such as efficientnet_lite0, or --drop-path 0"
        )
    last = max(len(blocks) - 1, 1)
    for i, block in enumerate(blocks):
        p = rate * i / last
        block.drop_path = DropPath(p) if p > 0 else nn.Identity()
    return len(blocks)


class _Batched(nn.Module):
    """torchvision's ``GeneralizedRCNNTransform`` without resizing or normalising: inputs come
    letterboxed and normalised by the engine's task (every backend sees the same tensor), so
    the detector only batches them and leaves its boxes in input pixels."""

    def forward(self, images: list[torch.Tensor], targets: Any = None) -> tuple[Any, Any]:
        from torchvision.models.detection.image_list import ImageList

        x = torch.stack(images) if isinstance(images, list | tuple) else images
        sizes = [(int(x.shape[-2]), int(x.shape[-1]))] * int(x.shape[0])
        return ImageList(x, sizes), targets

    def postprocess(self, result: Any, image_shapes: Any, original_image_sizes: Any) -> Any:
        return result


# ---------------------------------------------------------------------------- heads
def _anchor_sizes(levels: int, base: int = 32) -> tuple[tuple[int, ...], ...]:
    """Three anchor sizes per pyramid level (an octave in thirds), ``base`` at stride 8."""
    return tuple(
        tuple(int(base * 2**level * 2 ** (k / 3)) for k in range(3)) for level in range(levels)
    )


@HEADS.register("fasterrcnn")
def _fasterrcnn(backbone: nn.Module, spec: DetectorSpec) -> nn.Module:
    """Two stages: region proposals, then RoI-aligned classification and box refinement."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    from vitrina.models.roi_align import SeparableRoIAlign

    names = ["0", "1", "2"]
    levels = len(names) + 1  # + the max-pooled level ("pool")
    anchors = AnchorGenerator(
        sizes=tuple((32 * 2**i,) for i in range(levels)),
        aspect_ratios=((0.5, 1.0, 2.0),) * levels,
    )
    net = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        # torchvision's RoIAlign as matrix products (the same numbers): its own CPU backward
        # pass was a quarter of a training step
        box_roi_pool=SeparableRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
        # torchvision's box head is 1024 wide on 256-channel maps, trained on 512 regions a
        # photo; on a CPU its matrix products and (torchvision's) RoIAlign backward pass were
        # half of a training step, so: 512 wide on 128 channels, 64 regions a photo (a shelf photo
        # holds a few objects; a quarter of the regions are still objects).
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 512),
        box_predictor=FastRCNNPredictor(512, spec.num_classes + 1),
        # proposals kept per pyramid level before the RPN's NMS: as many in training as in
        # inference (torchvision trains with 2,000 on 800-pixel photos; at 1,000 on 224-pixel
        # ones the NMS was 9% of a CPU training step)
        rpn_pre_nms_top_n_train=RPN_PRE_NMS_TRAIN,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=64,
        box_positive_fraction=BOX_POSITIVE_FRACTION,
        box_score_thresh=spec.score_thresh,
        box_nms_thresh=spec.nms_thresh,
        box_detections_per_img=spec.max_detections,
    )
    net.roi_heads = _smoothed(net.roi_heads, BOX_LABEL_SMOOTHING)
    net.roi_heads.score_temperature = float(spec.score_temperature)  # type: ignore[assignment]
    return net


#: Faster R-CNN's box head: half of its 64 sampled regions a photo are objects (torchvision: a
#: quarter), and its classifier learns with label smoothing. A few hundred photos of look-alike
#: packages are named from few examples, and the head over-fits them (the classifier's loss fell
#: to 0.09 on the training photos while held-out ones confused chocolate, pasta and juice).
#: Measured on the detection benchmark (``groceries_det``, 800 photos to train, 200 held out,
#: 30 wall-minutes on 2 cores, `--input-size 224`): mAP@.5 0.670 / 0.691 / 0.712 (plain,
#: ``--flip``, ``--flip --scales 0.85,1,1.3``) -> 0.687 / 0.705 / 0.732, mAP@[.5:.95] 0.429 ->
#: 0.462 (plain).
BOX_POSITIVE_FRACTION = 0.5
#: Region proposals per pyramid level that enter the RPN's NMS in training (inference: 500).
RPN_PRE_NMS_TRAIN = 500
BOX_LABEL_SMOOTHING = 0.1


def _smoothed(heads: nn.Module, label_smoothing: float) -> nn.Module:
    """torchvision's ``RoIHeads`` made a :class:`~vitrina.models.roi_heads.SmoothedRoIHeads`
    (the same modules, so the same weights and state-dict keys; inference is unchanged)."""
    from vitrina.models.roi_heads import SmoothedRoIHeads

    heads.__class__ = SmoothedRoIHeads
    heads.label_smoothing = float(label_smoothing)  # type: ignore[assignment]
    return heads


@HEADS.register("retinanet")
def _retinanet(backbone: nn.Module, spec: DetectorSpec) -> nn.Module:
    """One stage, dense anchors, focal loss."""
    from functools import partial

    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead

    sizes = _anchor_sizes(5)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(
        backbone.out_channels,
        anchors.num_anchors_per_location()[0],
        spec.num_classes,
        norm_layer=partial(nn.GroupNorm, 32),
    )
    head.regression_head._loss_type = "giou"
    return RetinaNet(
        backbone,
        num_classes=spec.num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=spec.score_thresh,
        nms_thresh=spec.nms_thresh,
        detections_per_img=spec.max_detections,
    )


@HEADS.register("fcos")
def _fcos(backbone: nn.Module, spec: DetectorSpec) -> nn.Module:
    """One stage, anchor-free: each location predicts its distances to the box sides."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(
        sizes=tuple((8 * 2**i,) for i in range(5)), aspect_ratios=((1.0,),) * 5
    )
    return FCOS(
        backbone,
        num_classes=spec.num_classes,
        anchor_generator=anchors,
        score_thresh=spec.score_thresh,
        nms_thresh=spec.nms_thresh,
        detections_per_img=spec.max_detections,
    )


@HEADS.register("ssdlite")
def _ssdlite(backbone: nn.Module, spec: DetectorSpec) -> nn.Module:
    """SSDlite: depthwise-separable prediction heads on every pyramid level, default boxes."""
    from functools import partial

    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    levels = 5
    anchors = DefaultBoxGenerator([[2, 3]] * levels, min_ratio=0.1, max_ratio=0.9)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    head = SSDLiteHead(
        [backbone.out_channels] * levels,
        anchors.num_anchors_per_location(),
        spec.num_classes + 1,
        norm,
    )
    h, w = spec.input_size
    return SSD(
        backbone,
        anchors,
        (w, h),
        spec.num_classes + 1,
        head=head,
        score_thresh=spec.score_thresh,
        nms_thresh=spec.nms_thresh,
        detections_per_img=spec.max_detections,
        topk_candidates=300,
    )


_EXTRA = {"fasterrcnn": "pool", "retinanet": "p6p7", "fcos": "p6p7", "ssdlite": "p6p7"}


# ---------------------------------------------------------------------------- the model
class Detector(nn.Module):
    """A torchvision detector over a zoo backbone (see the module docstring).

    Attributes: ``arch`` (``<head>_<backbone>``), ``spec`` (:class:`DetectorSpec`),
    ``preprocess`` (the letterboxed input), ``num_classes``, ``class_names``,
    ``weights_origin``. ``net`` is the torchvision detector (state-dict keys ``net.``).
    """

    def __init__(self, spec: DetectorSpec, *, pretrained_backbone: bool = False) -> None:
        super().__init__()
        HEADS.get(spec.head)  # unknown names raise with suggestions
        backbone, pre = _backbone(spec, pretrained_backbone, _EXTRA.get(spec.head, "p6p7"))
        self.spec = replace(
            spec, return_nodes=backbone.return_nodes, in_channels=backbone.in_channels
        )
        self.net = HEADS.get(spec.head)(backbone, self.spec)
        self.net.transform = _Batched()
        self.label_offset = 1 if spec.head in WITH_BACKGROUND else 0
        # Under bf16 autocast the convolutions run in bf16, but anchors, box decoding and NMS
        # must not: torchvision casts anchors to the regression's dtype, and bf16 holds pixel
        # coordinates above 256 only to whole pixels or worse. The pyramid's maps and the
        # heads' outputs are handed on in fp32 (a no-op in fp32).
        for module in _float_boundaries(self.net, spec.head):
            module.register_forward_hook(_outputs_in_fp32)
        self.arch = self.spec.arch
        self.preprocess = pre
        self.num_classes = spec.num_classes
        self.class_names: list[str] | None = None
        self.weights_origin = (
            f"backbone {backbone.weights_origin}" if pretrained_backbone else "random"
        )

    # ------------------------------------------------------------------ training mode
    def train(self, mode: bool = True) -> Detector:
        """As ``nn.Module.train``; the backbone's batch norms keep their ImageNet statistics
        (detection batches are too small to estimate them, as torchvision's frozen BN)."""
        super().train(mode)
        if mode:
            for m in self.net.backbone.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def stem_parameters(self, norms: bool = True) -> list[nn.Parameter]:
        """Backbone parameters of the layers before stride 8 (the stem and first stages),
        which fine-tuning keeps frozen, as torchvision does with a ResNet's stem and layer1.

        ``norms=False``: as before 4 Dec 2026, only the layers without child modules, which
        leaves timm's norms (``BatchNormAct2d``) out; runs trained so resume so."""
        body = self.net.backbone.body
        strides: dict[str, int] = {}
        hooks = []
        h, w = self.spec.input_size
        for name, module in body.named_modules():
            # every module that owns parameters, leaf or not: timm's BatchNormAct2d holds its
            # activation as a child, and a stem whose norms trained made every training step
            # run backwards through the full-resolution layers
            owns = any(True for _ in module.parameters(recurse=False))
            if name and owns and (norms or not list(module.children())):

                def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                    if isinstance(out, torch.Tensor) and out.dim() == 4:
                        strides[name] = round(h / out.shape[-2])

                hooks.append(module.register_forward_hook(hook))
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                body(torch.zeros(1, self.preprocess.channels, h, w))
        finally:
            for hk in hooks:
                hk.remove()
            self.train(was_training)
        early = {n for n, s in strides.items() if s < STRIDES[0]}
        return [p for n, p in body.named_parameters() if n.rpartition(".")[0] in early]

    def split_backbone(self, level: int) -> tuple[nn.Module, nn.Module | None]:
        """The backbone cut after its ``level``-th feature map (0: stride 8, 1: stride 16,
        2: stride 32): ``lower(x) -> {"c0", ..., "c<level>"}`` and ``upper(c<level>) -> the
        remaining maps`` (``None`` when ``level`` is the last). Both share this model's
        parameters (training ``upper`` trains the detector). For caching the frozen lower part.

        Raises:
            VitrinaError: the network's later layers read earlier ones than the cut (a skip
                across stages): it cannot be cut there.
        """
        from torch import fx

        body = self.net.backbone.body
        names = [f"c{i}" for i in range(len(self.spec.return_nodes))]
        out_node = next(n for n in body.graph.nodes if n.op == "output")
        produced = out_node.args[0]

        def subgraph(cut: fx.Node | None, wanted: list[str]) -> fx.GraphModule:
            graph = fx.Graph()
            env: dict[fx.Node, fx.Node] = {}
            leaks: dict[fx.Node, fx.Node] = {}  # earlier nodes read after the cut

            def arg(n: fx.Node) -> fx.Node:
                if n in env:
                    return env[n]
                if n not in leaks:
                    leaks[n] = graph.placeholder(f"_before_cut_{n.name}")
                return leaks[n]

            copying = cut is None
            if cut is not None:
                env[cut] = graph.placeholder(names[level])
            for node in body.graph.nodes:
                if node is cut:
                    copying = True
                    continue
                if copying and node.op != "output":
                    env[node] = graph.node_copy(node, arg)
            graph.output({k: env[produced[k]] for k in wanted})
            gm = fx.GraphModule(body, graph)
            gm.graph.eliminate_dead_code()
            for ph in leaks.values():
                if ph.users:
                    raise VitrinaError(
                        f"backbone {self.spec.backbone!r} cannot be cut after its stride "
                        f"{STRIDES[level]} features (later layers read earlier ones)"
                    )
                gm.graph.erase_node(ph)
            gm.recompile()
            return gm

        lower = subgraph(None, names[: level + 1])
        if level == len(names) - 1:
            return lower, None
        return lower, subgraph(produced[names[level]], names[level + 1 :])

    # ------------------------------------------------------------------ outputs
    def boxes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per image of ``x`` (letterboxed, normalised ``(B, C, H, W)``) its boxes
        ``(N, 6)`` = ``[x1, y1, x2, y2, score, label]`` in input pixels, best score first."""
        if self.training:
            raise RuntimeError("Detector.boxes runs in eval mode (call .eval() first)")
        found = self.net(list(x.unbind(0)))
        return [_rows(d, self.label_offset) for d in found]

    def losses(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """torchvision's training losses; ``targets[i]``: ``boxes`` ``(n, 4)`` in input pixels,
        ``labels`` ``(n,)`` 0-based class indices (an image may have none)."""
        shifted = [
            {"boxes": t["boxes"].float(), "labels": t["labels"].long() + self.label_offset}
            for t in targets
        ]
        return self.net(list(x.unbind(0)), shifted)

    def set_score_temperature(self, temperature: float) -> None:
        """Score the boxes with the class logits divided by ``temperature`` from now on
        (``DetectorSpec.score_temperature``; what ``detect train`` fits on the validation
        photos). Faster R-CNN only: another head refuses a value other than 1."""
        self.spec = replace(self.spec, score_temperature=float(temperature))
        if hasattr(self.net, "roi_heads"):
            self.net.roi_heads.score_temperature = self.spec.score_temperature

    def onnx_single_image(self, output: str) -> nn.Module:
        """What ONNX export traces for ``output`` (``"boxes"``): one image ``(1, C, H, W)`` ->
        its ``(N, 6)`` boxes (torchvision's detectors export one image at a time)."""
        if output != "boxes":
            raise VitrinaError(f"model {self.arch!r} has no output {output!r}")
        return _OneImage(self)

    def config(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "detector": self.spec.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "weights_origin": self.weights_origin,
            "class_names": self.class_names,
        }

    def extra_repr(self) -> str:
        h, w = self.spec.input_size
        return f"arch={self.arch!r}, num_classes={self.num_classes}, input={w}x{h}"


def _float_boundaries(net: nn.Module, head: str) -> list[nn.Module]:
    """The modules whose outputs feed torchvision's box arithmetic."""
    if head == "fasterrcnn":
        return [net.backbone, net.rpn.head, net.roi_heads.box_predictor]
    return [net.backbone, net.head]


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _to_fp32(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_to_fp32(v) for v in value)
    return value


def _outputs_in_fp32(module: nn.Module, args: Any, output: Any) -> Any:
    return _to_fp32(output)


def _rows(d: dict[str, torch.Tensor], offset: int) -> torch.Tensor:
    return torch.cat(
        [
            d["boxes"].float(),
            d["scores"].float().unsqueeze(1),
            (d["labels"] - offset).float().unsqueeze(1),
        ],
        dim=1,
    )


class _OneImage(nn.Module):
    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector.boxes(x)[0]


def create_detector(spec: DetectorSpec, *, pretrained_backbone: bool = False) -> Detector:
    """A :class:`Detector` for ``spec``: the backbone with its ImageNet weights when
    ``pretrained_backbone`` (offline-first, as :func:`vitrina.models.create`), heads random.

    Raises:
        UnknownNameError: unknown head or backbone name (with suggestions).
        WeightsNotFoundError: the backbone's ImageNet weights are not available offline.
        VitrinaError: a backbone without feature maps at strides 8, 16 and 32.
    """
    return Detector(spec, pretrained_backbone=pretrained_backbone)
