"""Intermediate layers of a :class:`VitrinaModel` as embeddings.

Layer access is timm's FX feature extraction (``timm.models.get_graph_node_names`` /
``create_feature_extractor``: torchvision's helpers plus timm's leaf modules, so TF-"same"
padding and other data-dependent blocks trace). Names are graph node names of the model's
``net`` (``blocks.5``, ``layer3``, ``features.3``); a module name stands for that module's
output (its last node). A leading ``net.`` is accepted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel
from vitrina.registry import suggest

__all__ = [
    "POOLS",
    "LayerEmbedding",
    "graph_nodes",
    "l2_normalize",
    "layer_names",
    "layer_shapes",
    "module_layers",
    "node_of",
    "pool_features",
    "resolve_layers",
]

POOLS = ("avg", "max", "gem")
GEM_P = 3.0
GEM_EPS = 1e-6


def pool_features(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, H, W) maps -> (B, C) by ``avg``, ``max`` or ``gem`` (generalised mean, p=3,
    inputs clamped to 1e-6). (B, N, C) token sequences are pooled over N; (B, C) passes."""
    if pool not in POOLS:
        raise VitrinaError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        dims: tuple[int, ...] = (2, 3)
    elif x.dim() == 3:
        dims = (1,)
    else:
        raise VitrinaError(f"cannot pool a {x.dim()}-D layer output of shape {tuple(x.shape)}")
    if pool == "avg":
        return x.mean(dim=dims)
    if pool == "max":
        return x.amax(dim=dims)
    return x.clamp(min=GEM_EPS).pow(GEM_P).mean(dim=dims).pow(1.0 / GEM_P)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


def _fx():
    from timm.models import create_feature_extractor, get_graph_node_names

    return get_graph_node_names, create_feature_extractor


def network(model: VitrinaModel) -> nn.Module:
    """The raw network whose layers are named: ``model.net``; for an embedding run (backbone
    model + neck), its backbone's network, so layer names are the same as the backbone's."""
    from vitrina.models.embedding import EmbeddingModel

    return model.net.net if isinstance(model, EmbeddingModel) else model.net


def graph_nodes(model: VitrinaModel) -> list[str]:
    """Every graph node of ``model.net`` in eval mode, in execution order (input excluded)."""
    get_graph_node_names, _ = _fx()
    try:
        _, nodes = get_graph_node_names(network(model))
    except Exception as e:
        raise VitrinaError(
            f"{model.arch}: cannot trace the network to list its layers "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return [n for n in nodes if n != "x"]


def module_layers(model: VitrinaModel, nodes: list[str] | None = None, depth: int = 2) -> list[str]:
    """Module names up to ``depth`` levels (``blocks``, ``blocks.5``) that are in the graph,
    in execution order of their last node."""
    nodes = graph_nodes(model) if nodes is None else nodes
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        parts = n.split(".")
        for d in range(1, min(depth, len(parts)) + 1):
            last[".".join(parts[:d])] = i
    modules = {n for n, _ in network(model).named_modules() if n}
    names = [n for n in last if n in modules or n in nodes]
    return sorted(names, key=lambda n: (last[n], -n.count(".")))


def layer_names(model: VitrinaModel) -> list[str]:
    """Every name accepted as a layer: module names up to depth 2, then all graph nodes."""
    nodes = graph_nodes(model)
    mods = module_layers(model, nodes)
    seen = set(mods)
    return mods + [n for n in nodes if n not in seen]


def resolve_layers(model: VitrinaModel, layers: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Canonical layer names (``net.`` prefix dropped); unknown names raise with suggestions."""
    nodes = graph_nodes(model)
    out = []
    for raw in layers:
        name = raw.strip()
        if name.startswith("net."):
            name = name[4:]
        known = name in nodes or any(n.startswith(name + ".") for n in nodes)
        if not name or not known:
            names = layer_names(model)
            hint = suggest(name, names) or f" (layers include: {', '.join(names[:8])}, ...)"
            raise VitrinaError(
                f"{what}: no layer {raw!r} in {model.arch}{hint}; "
                f"`vitrina embed {what} --list-layers` shows them"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def node_of(name: str, nodes: list[str]) -> str:
    """The graph node a layer name stands for: itself, or a module's last node."""
    if name in nodes:
        return name
    inside = [n for n in nodes if n.startswith(name + ".")]
    if not inside:
        raise VitrinaError(f"no layer {name!r}")
    return inside[-1]


class _Extractor(nn.Module):
    """FX feature extractor returning ``{layer name: output}``; names that stand for the same
    node (``global_pool`` and ``global_pool.flatten``) share one output."""

    def __init__(self, graph: nn.Module, names: dict[str, str]) -> None:
        super().__init__()
        self.graph = graph
        self.names = dict(names)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        outs = self.graph(x)
        return {name: outs[node] for name, node in self.names.items()}


def _extractor(model: VitrinaModel, layers: tuple[str, ...]) -> _Extractor:
    _, create_feature_extractor = _fx()
    was = model.training
    model.eval()
    nodes = graph_nodes(model)
    names = {n: node_of(n, nodes) for n in layers}
    try:
        graph = create_feature_extractor(
            network(model), return_nodes={v: v for v in dict.fromkeys(names.values())}
        )
        return _Extractor(graph, names)
    except Exception as e:
        raise VitrinaError(
            f"{model.arch}: cannot extract layers {', '.join(layers)} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    finally:
        model.train(was)


def _dummy(model: VitrinaModel) -> torch.Tensor:
    h, w = model.preprocess.input_size
    return torch.zeros(1, model.preprocess.channels, h, w)


def layer_shapes(model: VitrinaModel, layers: list[str] | None = None) -> dict[str, tuple]:
    """Output shape of each layer (module names up to depth 2 by default) for one input."""
    names = module_layers(model) if layers is None else list(layers)
    fe = _extractor(model, tuple(names))
    # The extractor shares the model's modules: put their train/eval flags back afterwards.
    modes = {m: m.training for m in model.modules()}
    try:
        fe.eval()
        with torch.inference_mode():
            outs = fe(_dummy(model))
    finally:
        for m, training in modes.items():
            m.training = training
    return {n: _shape(outs[n]) for n in names}


def _shape(v: Any) -> tuple:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, list | tuple):
        return tuple(_shape(t) for t in v)
    return (type(v).__name__,)


class LayerEmbedding(VitrinaModel):
    """A model whose ``embed`` is the pooled (and optionally L2-normalized) outputs of some
    layers of ``source``, concatenated (and normalized again), so every engine backend runs it.

    ``net`` is the FX feature extractor over ``source.net`` (it shares its parameters).
    ``arch`` names the layers and pooling, so ONNX exports of different specs never collide;
    ``weights_origin`` is ``layers(...) of <source origin>`` and deliberately does not start
    with ``run:``: a run's stored variants compute the run's own embedding, not these layers.
    ``classify`` returns the embedding too (there is no classifier here).
    """

    def __init__(
        self, source: VitrinaModel, layers: tuple[str, ...], pool: str, normalize: bool
    ) -> None:
        if pool not in POOLS:
            raise VitrinaError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
        net = _extractor(source, layers)
        self_nodes = tuple(net.names[n] for n in layers)
        tag = f"{'+'.join(layers)}/{pool}{'' if normalize else '/raw'}"
        super().__init__(
            net,
            arch=f"{source.arch}@{tag}",
            preprocess=source.preprocess,
            num_classes=1,
            num_features=1,
            weights_origin=f"layers({tag}) of {source.weights_origin}",
        )
        self.source_arch = source.arch
        self.layers = tuple(layers)
        self.nodes = self_nodes  # the graph node each layer name stands for
        self.pool = pool
        self.normalize = normalize
        self.no_head = nn.Identity()
        self.eval()
        with torch.inference_mode():
            outs = self.net(_dummy(source))
        dims = []
        for n in layers:
            v = outs[n]
            if not isinstance(v, torch.Tensor) or v.dim() not in (2, 3, 4):
                raise VitrinaError(
                    f"layer {n!r} of {source.arch} outputs {_shape(v)}, not a feature map "
                    "(B, C, H, W), tokens (B, N, C) or a vector (B, C); pick another layer"
                )
            dims.append(int(v.shape[-1] if v.dim() == 3 else v.shape[1]))
        self.layer_dims = tuple(dims)
        self.num_features = self.num_classes = sum(dims)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.net(x)
        parts = []
        for n in self.layers:
            v = pool_features(outs[n], self.pool).flatten(1).float()
            parts.append(l2_normalize(v) if self.normalize else v)
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return l2_normalize(y) if self.normalize and len(parts) > 1 else y

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def head_module(self) -> nn.Module:
        return self.no_head

    def _replace_head(self, num_classes: int) -> None:
        raise VitrinaError(f"{self.arch}: an embedding model has no classifier to replace")
