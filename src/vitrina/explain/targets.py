"""What an explanation looks at: the CAM layer, the target class, the similarity score.

Layer names are module names of the model's raw network (:func:`vitrina.embed.layers.network`:
``model.net``, or an embedding run's backbone network), so ``blocks.5``, ``layer4`` or
``features`` mean the same here as in ``vitrina embed --layer``; a leading ``net.`` is accepted.
A CAM layer must be a module that runs once per forward pass and outputs a (B, C, H, W) map.
The default is the last such module with more than one spatial position that finishes before
the classifier head, skipping pass-through modules (Identity, Dropout): the last convolutional
feature map before global pooling (``layer4`` of a ResNet, ``features`` of a torchvision
VGG/MobileNet/EfficientNet/SqueezeNet, ``bn2`` of a timm EfficientNet), found by one recorded
forward pass, so it works for any network. Vision transformers have none (their only 4-D map is
the patch embedding): the error says so and points at the gradient methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitrina.embed.layers import network
from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel
from vitrina.registry import suggest

__all__ = [
    "LayerProbe",
    "SimilarityScore",
    "class_label",
    "probe_layers",
    "resolve_layer",
    "resolve_target",
]


# Modules that return their input at eval time: their output is another module's map.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)


@dataclass
class LayerProbe:
    """What one forward pass showed about the network's modules.

    Attributes:
        order: module names in the order their forward finished.
        shapes: output shape per module (its last call); ``()`` for non-tensor outputs.
        calls: number of calls per module in the pass.
        pass_through: modules that return their input at eval time (Identity, Dropout).
        head_done: position in ``order`` where the classifier head (when it is inside the
            network, as in SqueezeNet) finished; None otherwise.
    """

    order: list[str]
    shapes: dict[str, tuple[int, ...]]
    calls: dict[str, int]
    pass_through: set[str]
    head_done: int | None = None

    def feature_maps(self) -> list[str]:
        """Modules usable as CAM layers, in execution order: one call, (B, C, H, W) output
        with H * W > 1."""
        return [n for n in self.order if self.calls[n] == 1 and _spatial(self.shapes[n])]

    def default_layer(self) -> str | None:
        """The last feature map before the head, skipping pass-through modules. None when
        there is none, or when token sequences (B, N, C) follow it (a vision transformer:
        its last 4-D map is the patch embedding, which says nothing about the decision)."""
        pos = {n: i for i, n in enumerate(self.order)}
        end = len(self.order) if self.head_done is None else self.head_done
        maps = [n for n in self.feature_maps() if pos[n] < end and n not in self.pass_through]
        if not maps:
            return None
        later = self.order[pos[maps[-1]] + 1 :]
        if any(len(self.shapes[n]) == 3 and self.shapes[n][1] > 1 for n in later):
            return None
        return maps[-1]


def _spatial(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] * shape[3] > 1


def probe_layers(
    model: VitrinaModel, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, LayerProbe]:
    """``forward(x)`` without gradients, recording every named module of the network.

    Returns the output and the :class:`LayerProbe`. The recording hooks are removed before
    returning, also when ``forward`` raises.
    """
    modules = [(n, m) for n, m in network(model).named_modules() if n]
    head = {id(m) for m in model.head_module().modules()}
    order: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    step = iter(range(1 << 62))

    def recorder(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            order[name] = next(step)
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in modules]
    try:
        with torch.no_grad():
            y = forward(x)
    finally:
        for h in handles:
            h.remove()
    names = sorted(order, key=order.__getitem__)
    kinds = dict(modules)
    heads = [i for i, n in enumerate(names) if id(kinds[n]) in head]
    passing = {n for n in names if isinstance(kinds[n], _PASS_THROUGH)}
    return y, LayerProbe(names, shapes, calls, passing, min(heads) if heads else None)


def resolve_layer(
    model: VitrinaModel, layer: str | None, probe: LayerProbe
) -> tuple[str, nn.Module]:
    """``(name, module)`` of the CAM layer: ``layer`` or, when None, the default (see module doc).

    Raises :class:`VitrinaError` for an unknown name (with the closest names), a module the
    forward pass does not run, runs twice, or whose output is not a spatial feature map.
    """
    maps = probe.feature_maps()
    hint = f"CAM layers of {model.arch} include: {', '.join(maps[-6:])}" if maps else ""
    if layer is None:
        default = probe.default_layer()
        if default is None:
            raise VitrinaError(
                f"{model.arch}: no convolutional feature map (B, C, H, W) before the head for "
                "a CAM; name a layer, or use a gradient method (saliency, occlusion, ...)"
            )
        return default, network(model).get_submodule(default)
    name = layer.strip()
    name = name[4:] if name.startswith("net.") else name
    modules = dict(network(model).named_modules())
    if not name or name not in modules:
        close = suggest(name, [n for n in modules if n])
        if not close and hint:
            close = f" ({hint})"
        raise VitrinaError(f"no layer {layer!r} in {model.arch}{close}")
    if name not in probe.shapes:
        raise VitrinaError(
            f"layer {layer!r} of {model.arch} is not run by the forward pass ({hint})"
        )
    if probe.calls[name] > 1:
        raise VitrinaError(
            f"layer {layer!r} of {model.arch} runs {probe.calls[name]} times per forward pass "
            f"(a shared module); pick the block around it ({hint})"
        )
    if name not in maps:
        raise VitrinaError(
            f"layer {layer!r} of {model.arch} outputs {probe.shapes[name] or 'no tensor'}, "
            f"not a (B, C, H, W) feature map with H * W > 1 ({hint})"
        )
    return name, modules[name]


def class_label(model: VitrinaModel, index: int) -> str:
    """Class name of logit ``index``, or ``"class <index>"`` when the model has no names."""
    names = model.class_names
    return names[index] if names and 0 <= index < len(names) else f"class {index}"


def resolve_target(model: VitrinaModel, target: int | str) -> int:
    """Logit index of ``target``: an index, a class name, or an index written as text.

    Raises :class:`VitrinaError` for an index out of range or an unknown name (with the
    closest names, or all of them when there are few).
    """
    n = model.num_classes
    names = list(model.class_names or [])
    if isinstance(target, str):
        if target in names:
            return names.index(target)
        if not target.strip().lstrip("-").isdigit():
            if not names:
                raise VitrinaError(
                    f"target {target!r}: {model.arch} has no class names; "
                    f"give a class index 0..{n - 1}"
                )
            close = suggest(target, names)
            listed = f" (classes: {', '.join(names)})" if len(names) <= 20 else ""
            raise VitrinaError(f"unknown target class {target!r} for {model.arch}{close or listed}")
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int):
        raise VitrinaError(f"target must be a class index or name, not {target!r}")
    if not 0 <= target < n:
        raise VitrinaError(
            f"target {target} out of range: {model.arch} has {n} classes (0..{n - 1})"
        )
    return target


class SimilarityScore(nn.Module):
    """(B, C, H, W) -> (B, 1): cosine similarity of ``model.embed(x)`` to a fixed embedding.

    The norm of ``embed(x)`` is held constant under differentiation: the value is the cosine
    similarity, its gradient ``reference / |embed(x)|`` is the linear decomposition of that
    similarity over the features (Stylianou et al., "Visualizing Deep Similarity Networks",
    2019). The full cosine gradient would also subtract the image's own direction, which
    vanishes exactly when the two images match best. This is grad-cam's
    ``SimilarityToConceptTarget`` (its tutorial) as a module, so every method can use it.
    """

    def __init__(self, model: VitrinaModel, reference: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("reference", F.normalize(reference.detach().float().flatten(), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.embed(x).flatten(1).float()
        return ((f @ self.reference) / f.norm(dim=1).clamp_min(1e-12).detach()).unsqueeze(1)
