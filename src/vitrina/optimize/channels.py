"""The channels of a network that can be removed, what each one costs, and their removal.

Torch-Pruning's dependency graph finds the *groups*: sets of channels that must go together
(a convolution's outputs, its batch norm, the next layers' inputs, every branch of a residual
sum, a depthwise pair). This module adds what MorphNet needs on top of it:

* each group's **scale parameters** — the batch-norm scales (gamma) of its channels, or,
  where a group has no batch norm, the output filters of its layers — whose per-channel
  norm says whether a channel is alive;
* a **width model of the FLOPs**: every convolution and linear layer costs
  ``2 x kernel area x output positions x inputs per group x outputs``, each of those widths
  written in terms of the groups' widths, so the FLOPs of any combination of widths (and
  the cost of one more channel in a group, its derivative) is known without building the
  smaller network. It is tested against ``torch.utils.flop_counter`` on pruned networks;
* **masking** (zero a channel's scales and shifts: the network computes what the smaller
  one will) and **removal** (through the dependency graph).

Groups that would change the model's outputs (the classifier's classes, the width of the
embedding) are never offered: the pruned model answers the same questions, with the same
embedding size, as the model it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitrina.errors import VitrinaError

__all__ = ["ChannelGroup", "ChannelGroups", "LayerWidth", "NotPrunableError"]

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class NotPrunableError(VitrinaError):
    """The network has no channel that can be removed (or its graph cannot be traced)."""


@dataclass
class _Scale:
    """One tensor of a group's scale parameters, indexed by the group's channels."""

    param: nn.Parameter  # BN weight, or a layer's weight (channels on dim 0)
    bias: torch.Tensor | None  # BN bias / the layer's bias: zeroed by masking
    idx: torch.Tensor  # positions in param's dim 0
    root: torch.Tensor  # the group channel each position belongs to


@dataclass
class ChannelGroup:
    """Channels that are removed together; ``width`` of them, numbered 0..width-1."""

    index: int
    name: str  # the root layer's name
    width: int
    root: nn.Module
    handler: Any
    scales: list[_Scale] = field(default_factory=list)
    uses_bn: bool = True  # False: scales are the output filters (no batch norm in the group)
    writers: int = 0  # layers (not depthwise) that write these channels: > 1 where a sum ties them

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """(width,) the L2 norm of each channel's scale parameters (0: a dead channel)."""
        return self.norm_tensor().detach()

    def norm_tensor(self) -> torch.Tensor:
        """:meth:`norms` with gradients (what the regulariser adds up)."""
        sq = torch.zeros(self.width, device=self.scales[0].param.device)
        for s in self.scales:
            p = s.param.index_select(0, s.idx).float().reshape(len(s.idx), -1)
            sq = sq.index_add(0, s.root, p.pow(2).sum(1))
        return sq.clamp(min=0).sqrt()

    @torch.no_grad()
    def shrink(self, amount: float) -> None:
        """The proximal step of ``amount x sum of channel norms`` (group soft-thresholding):
        each channel's scales move ``amount`` towards zero as one vector, and stop at zero."""
        norms = self.norm_tensor()
        factor = (1 - amount / norms.clamp(min=1e-12)).clamp(min=0)
        for s in self.scales:
            f = factor.index_select(0, s.root).to(s.param.dtype)
            shape = (len(s.idx),) + (1,) * (s.param.dim() - 1)
            s.param.data[s.idx] = s.param.data[s.idx] * f.reshape(shape)

    @property
    def entries(self) -> int:
        """How many scale values each channel has (to compare norms across groups)."""
        return max(1, sum(s.param[0].numel() * len(s.idx) for s in self.scales) // self.width)


@dataclass
class _Layer:
    """A convolution or linear layer as the width model sees it."""

    name: str
    module: nn.Module
    macs_per_io: float  # kernel area x output positions (per image)
    out0: int
    in0: int
    groups0: int
    depthwise: bool
    out_owner: tuple[int, float] | None = None  # (group, layer channels per group channel)
    in_owners: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class LayerWidth:
    """A layer's output width before and after pruning (what the widths plot shows)."""

    name: str
    before: int
    after: int


class ChannelGroups:
    """The prunable channel groups of ``model`` and the width model of its FLOPs.

    Args:
        model: any network Torch-Pruning can trace (convolutions, linear layers, batch norm).
        example: an input batch (one image is enough) of the size the model runs at.
        forward: how to call the model for its output (default ``model(x)``); an embedding
            model is traced through ``embed``.
        protected: modules whose widths must not change (the classifier, an embedding neck);
            a group that touches them is not offered.
        residual: offer the groups a residual sum ties together (channels written by several
            layers: the stream of a stage of blocks). Off by default: a layer that reads fewer
            channels can be re-fitted (:mod:`vitrina.optimize.reconstruct`), a channel taken
            out of a residual stream is lost to every block of the stage — measured on
            EfficientNet-Lite0, removing them in order of Fisher per FLOP left a cats/dogs
            probe at chance before any fine-tune.
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        forward: Forward | None = None,
        protected: Sequence[nn.Module] = (),
        residual: bool = False,
    ) -> None:
        try:
            import torch_pruning as tp
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise VitrinaError("pruning needs torch-pruning: pip install torch-pruning") from e
        self.model = model
        self.example = example
        self._forward = forward or (lambda m, x: m(x))
        self._protected, self._residual = list(protected), residual  # for copy()
        shielded = {id(m) for p in protected for m in p.modules()}
        was_training = model.training
        model.eval()
        # Tracing follows autograd: frozen parameters would hide their layers.
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        try:
            self.graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example, forward_fn=self._forward, verbose=False
            )
            raw = list(
                self.graph.get_all_groups(
                    ignored_layers=[m for p in protected for m in p.modules()],
                    root_module_types=[nn.Conv2d, nn.Linear],
                )
            )
        except Exception as e:
            raise NotPrunableError(
                f"cannot trace the network's channels ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'no message'})"
            ) from None
        finally:
            model.train(was_training)
            for p in frozen:
                p.requires_grad_(False)
        names = {m: n for n, m in model.named_modules()}
        self.layers = self._measure_layers(names)
        by_module = {id(layer.module): layer for layer in self.layers}
        self.groups: list[ChannelGroup] = []
        for tg in raw:
            if any(id(dep.target.module) in shielded for dep, _ in tg):
                continue  # would change the classes or the embedding width
            group = self._describe(tg, len(self.groups), names, by_module)
            if group is not None and (residual or group.writers <= 1):
                self.groups.append(group)
            else:  # not offered: its layers keep their widths
                self._forget(len(self.groups))
        if not self.groups:
            raise NotPrunableError("no channel can be removed without changing the model's outputs")

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def _measure_layers(self, names: dict[nn.Module, str]) -> list[_Layer]:
        """Every convolution / linear layer the forward pass uses, with its output positions."""
        layers: dict[int, _Layer] = {}
        hooks = []

        def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                positions = out.numel() / (out.shape[0] * module.out_channels)
                o, i, g = module.out_channels, module.in_channels, module.groups
            else:
                assert isinstance(module, nn.Linear)
                k, positions = 1, out.numel() / (out.shape[0] * module.out_features)
                o, i, g = module.out_features, module.in_features, 1
            if id(module) in layers:  # called twice: it costs twice
                layers[id(module)].macs_per_io += k * positions
                return
            layers[id(module)] = _Layer(
                names.get(module, "?"), module, float(k * positions), o, i, g, g > 1 and g == i == o
            )

        for m in self.model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            self._forward(self.model, self.example[:1])
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        return list(layers.values())

    def _describe(
        self, tg: Any, index: int, names: dict[nn.Module, str], by_module: dict[int, _Layer]
    ) -> ChannelGroup | None:
        g = self.graph
        root_dep = tg[0].dep
        width = len(tg[0].idxs)
        group = ChannelGroup(
            index,
            names.get(root_dep.target.module, "?"),
            width,
            root_dep.target.module,
            root_dep.handler,
        )
        filters: list[_Scale] = []
        for item in tg:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if not isinstance(module, nn.Module) or not idxs:
                continue
            plain = torch.tensor([int(i) for i in idxs])
            root = torch.tensor([int(i) for i in item.root_idxs])
            out_fn = g.is_out_channel_pruning_fn(dep.handler)
            if isinstance(module, _BatchNorm) and module.affine and out_fn:
                group.scales.append(_Scale(module.weight, module.bias, plain, root))
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                layer = by_module.get(id(module))
                ratio = len(idxs) / width
                if out_fn:
                    depthwise = (
                        isinstance(module, nn.Conv2d) and 1 < module.groups == module.out_channels
                    )
                    group.writers += 0 if depthwise else 1
                    filters.append(_Scale(module.weight, None, plain, root))
                    if module.bias is not None:  # zeroed with the filter: the channel is 0
                        filters.append(_Scale(module.bias, None, plain, root))
                    if layer is not None:
                        layer.out_owner = (index, ratio)
                elif g.is_in_channel_pruning_fn(dep.handler) and layer is not None:
                    layer.in_owners.append((index, ratio))
        if not group.scales:
            group.uses_bn = False
            group.scales = filters
        return group if group.scales else None

    def _forget(self, index: int) -> None:
        """Undo what :meth:`_describe` wrote into the layers for a group not offered."""
        for layer in self.layers:
            if layer.out_owner is not None and layer.out_owner[0] == index:
                layer.out_owner = None
            layer.in_owners = [o for o in layer.in_owners if o[0] != index]

    # ------------------------------------------------------------------ widths and FLOPs
    @property
    def widths(self) -> list[int]:
        """Each group's full width (channels before any removal)."""
        return [grp.width for grp in self.groups]

    def _io(self, layer: _Layer, kept: Sequence[float]) -> tuple[float, float]:
        """(outputs, inputs per output) of ``layer`` when group ``i`` keeps ``kept[i]``."""
        out = float(layer.out0)
        if layer.out_owner is not None:
            g, r = layer.out_owner
            out -= r * (self.groups[g].width - kept[g])
        if layer.depthwise:
            return out, float(layer.in0 // layer.groups0)
        inp = float(layer.in0)
        for g, r in layer.in_owners:
            inp -= r * (self.groups[g].width - kept[g])
        return out, inp / layer.groups0

    def flops(self, kept: Sequence[float] | None = None) -> float:
        """FLOPs of one image (2 per multiply-accumulate, convolutions and linear layers) when
        group ``i`` keeps ``kept[i]`` channels (default: all)."""
        kept = self.widths if kept is None else kept
        total = 0.0
        for layer in self.layers:
            out, inp = self._io(layer, kept)
            total += 2.0 * layer.macs_per_io * out * inp
        return total

    def channel_costs(self, kept: Sequence[float] | None = None) -> list[float]:
        """FLOPs one more channel of each group costs at widths ``kept`` (default: all):
        the derivative of :meth:`flops`, MorphNet's per-channel cost."""
        kept = self.widths if kept is None else kept
        cost = [0.0] * len(self.groups)
        for layer in self.layers:
            out, inp = self._io(layer, kept)
            if layer.out_owner is not None:
                g, r = layer.out_owner
                cost[g] += 2.0 * layer.macs_per_io * r * inp
            if not layer.depthwise:
                for g, r in layer.in_owners:
                    cost[g] += 2.0 * layer.macs_per_io * out * r / layer.groups0
        return cost

    def layer_widths(self, kept: Sequence[float] | None = None) -> list[tuple[str, int]]:
        """Each convolution / linear layer's output width (forward order) at widths ``kept``."""
        kept = self.widths if kept is None else kept
        return [(layer.name, round(self._io(layer, kept)[0])) for layer in self.layers]

    # ------------------------------------------------------------------ masking and removal
    @torch.no_grad()
    def mask(self, keep: Sequence[torch.Tensor]) -> None:
        """Zero the scales and shifts of every channel ``keep[g]`` (bool, per group) drops.

        With activations that map 0 to 0 (ReLU, ReLU6, SiLU, hard-swish, GELU), the masked
        network computes exactly what :meth:`remove` leaves behind."""
        for grp, k in zip(self.groups, keep, strict=True):
            drop = (~k.bool()).nonzero().flatten()
            if not len(drop):
                continue
            for s in grp.scales:
                sel = torch.isin(s.root, drop)
                s.param.data[s.idx[sel]] = 0
                if s.bias is not None:
                    s.bias.data[s.idx[sel]] = 0

    def copy(self) -> ChannelGroups:
        """The same groups on a deep copy of the model, to try a removal on
        (``--prune-latency`` times candidates). The copy is traced again: torch-pruning's
        graph keeps its ``ops`` module and the autograd nodes of its trace, so it cannot be
        deep-copied, and one copied with those shared removed channels inconsistently."""
        import copy

        model = copy.deepcopy(self.model)
        mine = {id(m): n for n, m in self.model.named_modules()}
        theirs = dict(model.named_modules())
        clone = ChannelGroups(
            model,
            self.example,
            forward=self._forward,
            protected=[theirs[mine[id(m)]] for m in self._protected],
            residual=self._residual,
        )
        if [(g.name, g.width) for g in clone.groups] != [(g.name, g.width) for g in self.groups]:
            raise RuntimeError("the copied model's channel groups differ from the original's")
        return clone

    def remove(self, keep: Sequence[torch.Tensor]) -> None:
        """Remove every channel ``keep[g]`` drops, through the dependency graph (in place).

        A group always keeps at least one channel."""
        for grp, k in zip(self.groups, keep, strict=True):
            if len(k) != grp.width:
                raise ValueError(f"{grp.name}: {len(k)} flags for {grp.width} channels")
            if int(k.sum()) == 0:
                raise ValueError(f"{grp.name}: a group cannot lose every channel")
        for grp, k in zip(self.groups, keep, strict=True):
            drop = (~k.bool()).nonzero().flatten().tolist()
            if drop:
                self.graph.get_pruning_group(grp.root, grp.handler, drop).prune()
