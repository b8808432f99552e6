"""Layer by layer: what the first filters look like and which channels an image excites.

Arrays first (for your own plots), images second:

* :func:`first_layer_filters` -> (N, k, k, C) float in [0, 1]; 0.5 is a zero weight.
* :func:`filters_grid` -> PIL image of those filters, each enlarged with nearest-neighbour.
* :func:`feature_maps` -> ``{layer: FeatureMaps}``, the ``top`` strongest channels of each layer
  for one image (strongest = highest mean activation), each map scaled to [0, 1] on its own.
* :func:`feature_maps_figure` -> PIL image, one row per layer: the image, then its channels.
* :func:`write_layer_views` writes ``filters.png`` and ``feature_maps.png`` (atomically).

Layer names are those of :func:`vitrina.embed.layers.layer_names` (``blocks.3``, ``layer2``,
``features.4``); the default layers are the outputs of the last four resolution stages, so a
row goes from edges and textures (early) to object parts (late).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel

__all__ = [
    "FeatureMaps",
    "ImageLike",
    "default_layers",
    "feature_maps",
    "feature_maps_figure",
    "filters_grid",
    "first_layer_filters",
    "save_png",
    "write_layer_views",
]

ImageLike = str | os.PathLike | Image.Image | np.ndarray
DEFAULT_STAGES = 4  # default layers: outputs of the last this-many resolution stages
FILTER_TILE = 28  # filters are enlarged to at least this many pixels a side
MAP_TILE = 96  # side of one feature-map tile in the figure
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grey, as PIL's convert("L")


# --------------------------------------------------------------------------- shared helpers


def load_rgb(image: ImageLike) -> Image.Image:
    """A path, PIL image or array (H, W) / (H, W, 3), uint8 or float in [0, 1] -> RGB PIL."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
            raise VitrinaError(f"image array must be (H, W) or (H, W, 3), got {a.shape}")
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    from vitrina.io.images import read_image

    return read_image(image)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float in [0, 1]."""
    a = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    return a.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def tensor_to_array(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) in [0, 1] (C = 1 or 3) -> (H, W, 3) float32 in [0, 1]."""
    a = x.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float32)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def array_to_pil(a: np.ndarray) -> Image.Image:
    """(H, W, 3) float in [0, 1] -> RGB PIL."""
    return Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def to_network_input(model: VitrinaModel, rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB (or (B, 1, H, W) grey) in [0, 1] -> what ``model.net`` expects: grey
    for 1-channel models, then normalized by ``model.preprocess`` mean/std. Differentiable."""
    pre = model.preprocess
    x = rgb
    if pre.channels == 1 and rgb.shape[1] == 3:
        w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        x = (rgb * w).sum(dim=1, keepdim=True)
    mean = torch.tensor(pre.mean, dtype=rgb.dtype, device=rgb.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=rgb.dtype, device=rgb.device).view(1, -1, 1, 1)
    return (x - mean) / std


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside the block; every module's training flag
    and every parameter's ``requires_grad`` restored afterwards, whatever happens."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, was in modes:
            m.training = was
        for p, was in grads:
            p.requires_grad_(was)


def layer_extractor(model: VitrinaModel, layer: str) -> nn.Module:
    """FX extractor returning ``{layer: output}`` (the graph stops at that layer); it shares
    ``model``'s parameters and registers no hooks. ``layer`` must be resolved already."""
    from vitrina.embed.layers import _extractor

    return _extractor(model, (layer,)).eval()


def resolve_layer(model: VitrinaModel, layer: str) -> str:
    """Canonical name of one layer; an unknown one raises a one-line error with suggestions."""
    from vitrina.embed.layers import resolve_layers

    return resolve_layers(model, (layer,), model.arch)[0]


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically (parent folders created); return the path."""
    import io

    from vitrina.io import atomic_write_bytes

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(p, buf.getvalue())
    return p


def _font(size: int = 12) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


# --------------------------------------------------------------------------- first-layer filters


def first_conv(model: VitrinaModel) -> nn.Conv2d:
    """The first ``nn.Conv2d`` the network runs (found by one forward pass, not module order)."""
    from vitrina.embed.layers import network

    net = network(model)
    seen: list[nn.Conv2d] = []

    def hook(module: nn.Module, *_: Any) -> None:
        if not seen:
            seen.append(module)  # type: ignore[arg-type]

    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise VitrinaError(f"{model.arch} has no 2-D convolution; there are no filters to show")
    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        h, w = model.preprocess.input_size
        x = torch.zeros(1, model.preprocess.channels, h, w, device=model_device(model))
        with frozen(model), torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen[0] if seen else convs[0]


def first_layer_filters(model: VitrinaModel) -> np.ndarray:
    """Weights of the first convolution as images: (N, k, k, 3) for RGB inputs, (N, k, k, 1)
    otherwise (inputs other than 1 or 3 channels are averaged), float32 in [0, 1].

    Each filter is scaled on its own, symmetrically: 0.5 is a zero weight, 0 and 1 its
    largest negative and positive weights. Colours are in the normalized input space.
    """
    w = first_conv(model).weight.detach().float().cpu()  # (N, Cin, kh, kw)
    if w.shape[1] not in (1, 3):
        w = w.mean(dim=1, keepdim=True)
    peak = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * w / peak).permute(0, 2, 3, 1).numpy().astype(np.float32)


def filters_grid(model: VitrinaModel, *, columns: int | None = None) -> Image.Image:
    """The first convolution's filters as one RGB image: tiles enlarged with nearest-neighbour
    to at least :data:`FILTER_TILE` pixels (3x3 kernels stay visible), 2-pixel dark gaps."""
    f = first_layer_filters(model)
    n, kh, kw, _ = f.shape
    scale = max(1, math.ceil(FILTER_TILE / max(kh, kw)))
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    gap = 2
    th, tw = kh * scale, kw * scale
    canvas = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 0.15, np.float32)
    tiles = np.repeat(np.repeat(f, scale, axis=1), scale, axis=2)
    if tiles.shape[3] == 1:
        tiles = np.repeat(tiles, 3, axis=3)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        canvas[y : y + th, x : x + tw] = tiles[i]
    return array_to_pil(canvas)


# --------------------------------------------------------------------------- feature maps


@dataclass
class FeatureMaps:
    """The strongest channels of one layer for one image.

    Attributes:
        layer: layer name.
        maps: (top, h, w) float32, each map min-max scaled to [0, 1] on its own (a constant
            map is all zeros); strongest first.
        channels: (top,) channel indices into the layer's output.
        strengths: (top,) mean activation of each of those channels (raw, unscaled), descending.
        shape: (C, H, W) of the layer's output.
    """

    layer: str
    maps: np.ndarray
    channels: np.ndarray
    strengths: np.ndarray
    shape: tuple[int, int, int]


def default_layers(model: VitrinaModel, stages: int = DEFAULT_STAGES) -> list[str]:
    """Outputs of the last ``stages`` resolution stages: among module layers (depth <= 2) with a
    (B, C, H, W) output of at least 2x2, the last layer at each spatial size, deepest kept."""
    from vitrina.embed.layers import graph_nodes, layer_shapes, module_layers, node_of

    with frozen(model):  # layer_shapes' extractor switches shared modules to eval mode
        nodes = graph_nodes(model)
        names = module_layers(model, nodes)
        shapes = layer_shapes(model, names)
    last_at: dict[tuple[int, int], str] = {}
    used_nodes: set[str] = set()
    for name in names:  # execution order; for equal nodes the deeper name comes first
        s = shapes[name]
        node = node_of(name, nodes)
        if len(s) != 4 or min(s[2], s[3]) < 2 or node in used_nodes:
            continue
        used_nodes.add(node)
        last_at.pop((s[2], s[3]), None)  # re-insert: dict order follows the latest layer
        last_at[(s[2], s[3])] = name
    picked = list(last_at.values())
    if not picked:
        raise VitrinaError(f"{model.arch} has no layer with a spatial feature map to show")
    return picked[-stages:]


def _input_tensor(model: VitrinaModel, image: ImageLike) -> torch.Tensor:
    from vitrina.data.transforms import eval_transform

    return eval_transform(model.preprocess)(load_rgb(image)).unsqueeze(0)


def _display(model: VitrinaModel, x: torch.Tensor) -> np.ndarray:
    """Normalized network input (1, C, H, W) -> (H, W, 3) in [0, 1], as the network saw it."""
    pre = model.preprocess
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    return tensor_to_array(x.cpu() * std + mean)


def _layer_outputs(
    model: VitrinaModel, x: torch.Tensor, layers: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    from vitrina.embed.layers import _extractor

    with frozen(model), torch.no_grad():
        fe = _extractor(model, layers).eval()
        return fe(x.to(model_device(model)))


def feature_maps(
    model: VitrinaModel,
    image: ImageLike,
    layers: list[str] | tuple[str, ...] | None = None,
    top: int = 16,
) -> dict[str, FeatureMaps]:
    """The ``top`` strongest channels (highest mean activation) of each layer for one image.

    The image is prepared as for classification (resize, center crop, normalize). ``layers``
    default to :func:`default_layers`. Unknown layers raise a one-line error listing close names;
    a layer without a (B, C, H, W) output (a pooled vector, tokens) raises too.
    """
    from vitrina.embed.layers import resolve_layers

    if top < 1:
        raise VitrinaError(f"top must be >= 1, got {top}")
    names = (
        tuple(default_layers(model))
        if layers is None
        else resolve_layers(model, tuple(layers), model.arch)
    )
    outs = _layer_outputs(model, _input_tensor(model, image), names)
    result: dict[str, FeatureMaps] = {}
    for name in names:
        a = outs[name]
        if not isinstance(a, torch.Tensor) or a.dim() != 4:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise VitrinaError(
                f"layer {name!r} of {model.arch} outputs {shape}, not a feature map "
                "(B, C, H, W); pick an earlier layer"
            )
        a = a[0].float().cpu()  # (C, H, W)
        strength = a.mean(dim=(1, 2))
        k = min(top, a.shape[0])
        order = torch.argsort(strength, descending=True, stable=True)[:k]
        maps = a[order]
        lo = maps.amin(dim=(1, 2), keepdim=True)
        span = maps.amax(dim=(1, 2), keepdim=True) - lo
        scaled = torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))
        result[name] = FeatureMaps(
            layer=name,
            maps=scaled.numpy().astype(np.float32),
            channels=order.numpy(),
            strengths=strength[order].numpy().astype(np.float32),
            shape=(int(a.shape[0]), int(a.shape[1]), int(a.shape[2])),
        )
    return result


def _colorize(maps: np.ndarray) -> np.ndarray:
    """(N, h, w) in [0, 1] -> (N, h, w, 3) through matplotlib's viridis colormap."""
    from matplotlib import colormaps

    return colormaps["viridis"](maps)[..., :3].astype(np.float32)


def _tile(a: np.ndarray, side: int) -> Image.Image:
    """(h, w, 3) in [0, 1] -> a ``side``-pixel square tile (nearest keeps map cells crisp)."""
    im = array_to_pil(a)
    h, w = a.shape[:2]
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return im.resize(size, Image.Resampling.NEAREST if s >= 1 else Image.Resampling.BILINEAR)


def feature_maps_figure(
    model: VitrinaModel,
    image: ImageLike,
    layers: list[str] | tuple[str, ...] | None = None,
    top: int = 8,
) -> Image.Image:
    """One row per layer: the image as the network sees it, then its ``top`` strongest
    channels (viridis, each on its own scale), titled ``layer  CxHxW`` and channel numbers."""
    fm = feature_maps(model, image, layers, top)
    shown = _display(model, _input_tensor(model, image))
    font = _font(12)
    side, gap, title_h = MAP_TILE, 6, 18
    ncol = 1 + max(len(f.channels) for f in fm.values())
    width = gap + ncol * (side + gap)
    row_h = title_h + side + 14 + gap
    canvas = Image.new("RGB", (width, gap + len(fm) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, f in enumerate(fm.values()):
        y = gap + r * row_h
        c, h, w = f.shape
        draw.text((gap, y), f"{f.layer}   {c}x{h}x{w}", fill=(0, 0, 0), font=font)
        tiles = [_tile(shown, side)] + [_tile(m, side) for m in _colorize(f.maps)]
        labels = ["input"] + [f"ch {int(ch)}" for ch in f.channels]
        for i, (t, label) in enumerate(zip(tiles, labels, strict=True)):
            x = gap + i * (side + gap)
            canvas.paste(t, (x, y + title_h))
            draw.text((x, y + title_h + side + 1), label, fill=(80, 80, 80), font=font)
    return canvas


def write_layer_views(
    model: VitrinaModel,
    image: ImageLike,
    out_dir: str | os.PathLike,
    *,
    layers: list[str] | tuple[str, ...] | None = None,
    top: int = 8,
) -> dict[str, Path]:
    """Write ``filters.png`` (first-layer filters) and ``feature_maps.png`` into ``out_dir``."""
    out = Path(out_dir)
    return {
        "filters": save_png(filters_grid(model), out / "filters.png"),
        "feature_maps": save_png(
            feature_maps_figure(model, image, layers, top), out / "feature_maps.png"
        ),
    }


def _resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size), bilinear with antialiasing when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
