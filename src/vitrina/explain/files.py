"""Explanations written to files, for a model given by name: what ``vitrina explain layers``,
``neuron`` and ``dream`` make.

Every function takes a run folder or a zoo name (or a loaded :class:`VitrinaModel`), refuses
an output that exists before loading anything, and writes atomically.

>>> from vitrina.explain.files import write_dream, write_neuron
>>> write_neuron("efficientnet_lite0", "n.png", layer="blocks.4", channel=7)   # doctest: +SKIP
>>> write_dream("efficientnet_lite0", "photo.jpg", "dream.png", layer="blocks.3")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from vitrina.errors import refuse_existing
from vitrina.explain.featureviz import VizResult, dream, visualize
from vitrina.explain.layers import ImageLike, save_png, write_layer_views
from vitrina.models import VitrinaModel

__all__ = ["load_model", "write_dream", "write_layers", "write_neuron"]

PathLike = str | os.PathLike[str]
ModelLike = str | os.PathLike[str] | VitrinaModel


def load_model(model: ModelLike) -> tuple[VitrinaModel, str]:
    """``(model in eval mode, where its weights come from)`` for a run folder or a zoo name
    (ImageNet weights); a loaded model is returned as it is, described by its class."""
    if isinstance(model, VitrinaModel):
        return model, type(model).__name__
    from vitrina.embed.core import load_source

    net, _, origin = load_source(str(model))
    return net.eval(), origin


def write_layers(
    model: ModelLike,
    photo: ImageLike,
    out_dir: PathLike,
    *,
    layers: Sequence[str] | None = None,
    top: int = 8,
) -> dict[str, Path]:
    """``filters.png`` (the first layer's filters) and ``feature_maps.png`` (the ``top``
    strongest maps of each of ``layers``, default one per stage, for ``photo``) in
    ``out_dir``; see :func:`vitrina.explain.layers.write_layer_views`."""
    out = Path(out_dir)
    refuse_existing(out / "filters.png", out / "feature_maps.png")
    net, _ = load_model(model)
    return write_layer_views(net, photo, out, layers=list(layers) if layers else None, top=top)


def write_neuron(
    model: ModelLike,
    out: PathLike,
    *,
    layer: str | None = None,
    channel: int | None = None,
    target: int | str | None = None,
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    param: str = "fourier",
    on_progress: Callable[[int, int], None] | None = None,
) -> VizResult:
    """Synthesise an image that excites ``channel`` of ``layer`` (or the logit of ``target``,
    a class name or index) with :func:`~vitrina.explain.featureviz.visualize`, and write it
    as the PNG ``out``."""
    out = Path(out)
    refuse_existing(out)
    net, _ = load_model(model)
    class_index = None
    if target is not None:
        from vitrina.explain.targets import resolve_target

        class_index = resolve_target(net, target)
    res = visualize(
        net,
        layer=layer,
        channel=channel,
        class_index=class_index,
        steps=steps,
        size=size,
        seed=seed,
        param=param,
        on_progress=on_progress,
    )
    save_png(res.image, out)
    return res


def write_dream(
    model: ModelLike,
    photo: ImageLike,
    out: PathLike,
    *,
    layer: str,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 20,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """DeepDream on ``photo`` (:func:`~vitrina.explain.featureviz.dream`), written as the
    PNG ``out``; ``on_progress(done, total)`` counts steps over every octave."""
    out = Path(out)
    refuse_existing(out)
    net, _ = load_model(model)
    img = dream(
        net,
        photo,
        layer=layer,
        octaves=octaves,
        octave_scale=octave_scale,
        steps=steps,
        seed=seed,
        on_progress=on_progress,
    )
    return save_png(img, out)
