"""The one model contract: :class:`VitrinaModel`.

Every network vitrina builds (its own small CNNs, torchvision and timm models) is wrapped so
that the rest of the code sees the same interface::

    model.embed(x)     -> (B, model.num_features)   pooled features before the classifier
    model.embed_and_map(x) -> (embed(x), (B, C, h, w))  and the last feature map, same pass
    model.classify(x)  -> (B, model.num_classes)    logits (== model(x))
    model.reset_classifier(n)                        fresh n-class head, features kept
    model.head_parameters() / model.backbone_parameters()   disjoint, cover all parameters

Return types never depend on flags or on train/eval mode.

State-dict layout: the wrapped network lives in ``self.net``, so keys start with ``net.``.
For networks whose classifier is a plain final ``nn.Linear`` (torchvision models, vitrina's
own CNNs) that Linear is moved out of the network into ``self.head`` (keys ``head.weight``,
``head.bias``) and replaced by ``nn.Identity`` inside it, so ``net(x)`` *is* the embedding.
timm models and SqueezeNet keep their head inside ``net``. :meth:`VitrinaModel.load_weights`
accepts both this layout and the raw network's own state dict.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from vitrina.errors import VitrinaError
from vitrina.models.preprocess import Preprocess

__all__ = [
    "LinearHeadModel",
    "SqueezeNetModel",
    "TimmModel",
    "VitrinaModel",
    "drop_classifier",
]


class VitrinaModel(nn.Module):
    """A classifier with an embedding, a replaceable head and a preprocessing record.

    Attributes:
        arch: registry name; ``vitrina.models.create(arch)`` rebuilds the same network.
        num_classes: number of logits.
        num_features: embedding size (input size of the final classifier).
        preprocess: how inputs must be prepared (see :func:`vitrina.data.transforms.eval_transform`).
        class_names: ImageNet category names when the model carries a 1000-class ImageNet head,
            class names of a training run when loaded from one, else ``None``.
        weights_origin: where the weights came from ("random", "file:/abs/path", ...).
    """

    # Top-level children that appear as state-dict key prefixes of the vitrina layout.
    _layout_prefixes: ClassVar[tuple[str, ...]] = ("net",)

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        preprocess: Preprocess,
        num_classes: int,
        num_features: int,
        class_names: list[str] | None = None,
        weights_origin: str = "random",
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.preprocess = preprocess
        self.num_classes = int(num_classes)
        self.num_features = int(num_features)
        self.class_names = list(class_names) if class_names is not None else None
        self.weights_origin = weights_origin
        # Raw-state-dict key prefixes with no counterpart here (removed auxiliary heads).
        self.ignored_raw_prefixes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def wrap(
        net: nn.Module,
        *,
        arch: str,
        preprocess: Preprocess | None = None,
        class_names: list[str] | None = None,
        weights_origin: str = "random",
    ) -> VitrinaModel:
        """Wrap a network in the matching adapter.

        timm models (``forward_features``/``forward_head``/``get_classifier``) use timm's own
        API; torchvision's SqueezeNet keeps its convolutional head; anything else must end in
        an ``nn.Linear`` classifier (the last Linear in module order).
        """
        pre = preprocess or Preprocess()
        kw: dict[str, Any] = {
            "arch": arch,
            "preprocess": pre,
            "class_names": class_names,
            "weights_origin": weights_origin,
        }
        if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
            return TimmModel(net, **kw)
        if type(net).__name__ == "SqueezeNet" and hasattr(net, "features"):
            return SqueezeNetModel(net, **kw)
        return LinearHeadModel(net, **kw)

    # ------------------------------------------------------------------ the contract
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_features): pooled features, the classifier's input."""
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)

    def embed_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embed(x), feature map)`` in one pass: the map is the last spatial feature map
        of the network, ``(B, C, h, w)``, before global pooling (part-based features, e.g.
        AlignedReID's horizontal stripes, pool it themselves).

        This generic version runs :meth:`embed` and keeps the last 4-D module output larger
        than 1 x 1 (a ResNet's ``layer4``, torchvision's ``features``, a small CNN's last
        pooling); subclasses with a feature API (timm) override it. Raises
        :class:`VitrinaError` for a network without a spatial map (an MLP)."""
        found: list[torch.Tensor] = []

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            if (
                isinstance(output, torch.Tensor)
                and output.dim() == 4
                and output.shape[-2:].numel() > 1
            ):
                found[:] = [output]

        handles = [m.register_forward_hook(keep) for m in self.net.modules() if m is not self.net]
        try:
            pooled = self.embed(x)
        finally:
            for h in handles:
                h.remove()
        if not found:
            raise VitrinaError(
                f"{self.arch}: no spatial feature map found (no 4-D output larger than 1x1); "
                "part-based features need a convolutional backbone or larger inputs"
            )
        return pooled, found[0]

    def head_module(self) -> nn.Module:
        """The final classifier module (what linear probing trains)."""
        raise NotImplementedError

    def _replace_head(self, num_classes: int) -> None:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised ``num_classes`` head; features are kept.

        The new head lives on the old head's device and dtype. ``class_names`` is cleared: the
        caller that knows the new classes sets it.
        """
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = next(iter(self.head_parameters()), None)
        self._replace_head(num_classes)
        if old is not None:
            self.head_module().to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes
        self.class_names = None

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of :meth:`head_module`."""
        return list(self.head_module().parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter not in the head (disjoint from :meth:`head_parameters`)."""
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def config(self) -> dict[str, Any]:
        """JSON-ready description (what a run folder records next to the weights)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "num_features": self.num_features,
            "preprocess": self.preprocess.to_dict(),
            "weights_origin": self.weights_origin,
            "class_names": self.class_names,
        }

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, num_classes={self.num_classes}, "
            f"num_features={self.num_features}, weights={self.weights_origin!r}"
        )

    # ------------------------------------------------------------------ weights
    def head_key_prefix(self) -> str:
        """State-dict key prefix of the head module in the vitrina layout (e.g. ``head``)."""
        head = self.head_module()
        targets = {id(m) for m in head.modules()} if isinstance(head, nn.ModuleList) else {id(head)}
        for name, module in self.named_modules():
            if id(module) in targets:
                return name
        raise VitrinaError(f"{self.arch}: cannot locate the classifier head")  # pragma: no cover

    def _raw_key(self, key: str) -> str:
        """Vitrina-layout key for a key of the raw network's state dict."""
        return f"net.{key}"

    def to_vitrina_layout(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept a state dict of this wrapper or of the raw network; return wrapper keys."""
        sd = dict(state_dict)
        if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        firsts = {k.split(".", 1)[0] for k in sd}
        if sd and "net" in firsts and firsts <= set(self._layout_prefixes):
            return sd
        out: dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            if self.ignored_raw_prefixes and k.startswith(self.ignored_raw_prefixes):
                continue
            out[self._raw_key(k)] = v
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """``nn.Module.load_state_dict``; a state dict without module versions (safetensors
        stores none, key remapping drops them) is read as written by the current code.
        torchvision's MNASNet, for one, refuses a state dict with no version."""
        if getattr(state_dict, "_metadata", None) is None:
            versions = getattr(self.state_dict(), "_metadata", None)
            if versions is not None:
                state_dict = OrderedDict(state_dict)
                state_dict._metadata = versions  # type: ignore[attr-defined]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def num_classes_in(self, state_dict: Mapping[str, torch.Tensor]) -> int | None:
        """Number of classes of the head stored in ``state_dict`` (vitrina layout), if found."""
        prefix = self.head_key_prefix()
        for key in (f"{prefix}.weight", f"{prefix}.0.weight"):
            w = state_dict.get(key)
            if isinstance(w, torch.Tensor) and w.ndim >= 1:
                return int(w.shape[0])
        return None

    def load_weights(
        self, state_dict: Mapping[str, torch.Tensor], *, what: str = "weights"
    ) -> None:
        """Load a state dict (vitrina or raw-network layout), strictly.

        A head with another number of classes than this model's replaces the head first, so
        the model ends with the stored head. Mismatches raise :class:`VitrinaError` naming
        ``what`` (e.g. the file).
        """
        sd = self.to_vitrina_layout(state_dict)
        stored = self.num_classes_in(sd)
        if stored is not None and stored != self.num_classes:
            self.reset_classifier(stored)
        try:
            self.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise VitrinaError(
                f"{what} do not fit model {self.arch!r}: {self._mismatch(sd) or _first_line(e)}"
            ) from None

    def _mismatch(self, sd: Mapping[str, torch.Tensor]) -> str:
        """One-line summary of how ``sd`` differs from this model's state dict."""
        own = self.state_dict()
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in sd if k not in own]
        wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: "
                f"{tuple(sd[k].shape)} vs {tuple(own[k].shape)})"
            )
        return "; ".join(parts)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class TimmModel(VitrinaModel):
    """timm network: ``forward_features`` + ``forward_head(pre_logits=True)``."""

    def __init__(self, net: nn.Module, **kw: Any) -> None:
        num_classes = int(getattr(net, "num_classes", 0) or 0)
        has_head_api = hasattr(net, "get_classifier") and hasattr(net, "reset_classifier")
        if num_classes < 1 or not has_head_api:
            raise VitrinaError(
                f"{kw.get('arch')!r} is a feature encoder without a classifier head "
                "(vitrina needs an image classifier)"
            )
        super().__init__(net, num_classes=num_classes, num_features=_timm_num_features(net), **kw)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net.forward_features(x)
        return self.net.forward_head(feats, pre_logits=True).flatten(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x)).flatten(1)

    def embed_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.forward_features(x)
        pooled = self.net.forward_head(feats, pre_logits=True).flatten(1)
        return pooled, _timm_map(self.net, feats, x, self.arch)

    def head_module(self) -> nn.Module:
        clf = self.net.get_classifier()
        if isinstance(clf, tuple | list):  # distilled models: (head, head_dist)
            return nn.ModuleList(list(clf))
        return clf

    def _replace_head(self, num_classes: int) -> None:
        self.net.reset_classifier(num_classes)


def _timm_map(net: nn.Module, feats: torch.Tensor, x: torch.Tensor, arch: str) -> torch.Tensor:
    """timm's ``forward_features`` output as ``(B, C, h, w)``: NCHW as is, NHWC permuted,
    a vision transformer's tokens (prefix tokens dropped) laid back on the patch grid."""
    if feats.dim() == 4:
        if str(getattr(net, "output_fmt", "NCHW")).upper() == "NHWC":
            return feats.permute(0, 3, 1, 2)
        return feats
    patch = getattr(net, "patch_embed", None)
    if feats.dim() == 3 and patch is not None:
        if hasattr(patch, "dynamic_feat_size"):
            h, w = patch.dynamic_feat_size(tuple(x.shape[-2:]))
        else:
            h, w = patch.grid_size
        tokens = feats[:, int(getattr(net, "num_prefix_tokens", 0)) :]
        if tokens.shape[1] == h * w:
            return tokens.transpose(1, 2).reshape(len(tokens), -1, h, w)
    raise VitrinaError(
        f"{arch}: cannot lay its features {tuple(feats.shape)} out as a (B, C, h, w) map"
    )


def _timm_num_features(net: nn.Module) -> int:
    clf = net.get_classifier()
    if isinstance(clf, tuple | list):
        clf = clf[0]
    if isinstance(clf, nn.Linear):
        return int(clf.in_features)
    size = getattr(net, "head_hidden_size", None) or getattr(net, "num_features", None)
    if not size:
        raise VitrinaError(f"cannot tell the embedding size of timm model {type(net).__name__}")
    return int(size)


class LinearHeadModel(VitrinaModel):
    """Network whose last ``nn.Linear`` (in module order) is its classifier.

    That Linear moves to ``self.head`` and an ``nn.Identity`` takes its place, so
    ``embed(x) = net(x).flatten(1)`` and ``classify(x) = head(embed(x))``.
    """

    _layout_prefixes = ("net", "head")

    def __init__(self, net: nn.Module, **kw: Any) -> None:
        path = ""
        for name, module in net.named_modules():
            if isinstance(module, nn.Linear):
                path = name
        if not path:
            raise VitrinaError(
                f"{kw.get('arch')}: no final nn.Linear classifier found; wrap it yourself"
            )
        head = net.get_submodule(path)
        assert isinstance(head, nn.Linear)
        net.set_submodule(path, nn.Identity())
        super().__init__(net, num_classes=head.out_features, num_features=head.in_features, **kw)
        self.head = head
        self.head_path = path  # where the classifier sits in the raw network

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def head_module(self) -> nn.Module:
        return self.head

    def _replace_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)

    def _raw_key(self, key: str) -> str:
        if key.startswith(self.head_path + "."):
            return "head." + key[len(self.head_path) + 1 :]
        return f"net.{key}"


class SqueezeNetModel(VitrinaModel):
    """torchvision SqueezeNet: its classifier is a 1x1 conv followed by ReLU and pooling.

    ``classify`` runs the network unchanged (exact logits); ``embed`` is the global average of
    ``features`` (512-d), the input of that conv.
    """

    def __init__(self, net: nn.Module, **kw: Any) -> None:
        conv = net.classifier[1]
        if not isinstance(conv, nn.Conv2d):  # pragma: no cover - torchvision layout changed
            raise VitrinaError(f"{kw.get('arch')}: unexpected SqueezeNet classifier layout")
        super().__init__(net, num_classes=conv.out_channels, num_features=conv.in_channels, **kw)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.net.features(x), 1), 1)

    def embed_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.net.features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1), fmap

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)

    def head_module(self) -> nn.Module:
        return self.net.classifier[1]

    def _replace_head(self, num_classes: int) -> None:
        conv = nn.Conv2d(self.num_features, num_classes, kernel_size=1)
        nn.init.normal_(conv.weight, mean=0.0, std=0.01)  # as SqueezeNet initialises it
        nn.init.zeros_(conv.bias)
        self.net.classifier[1] = conv
        self.net.num_classes = num_classes


def drop_classifier(model: VitrinaModel) -> None:
    """Remove ``model``'s classifier weights (its ``embed`` is unchanged; ``classify`` then
    returns the embedding): for a backbone inside an embedding model or an autoencoder,
    whose own head is never used. Models whose head cannot be removed keep it."""
    if isinstance(model, TimmModel):
        model.net.reset_classifier(0)
    elif isinstance(model, LinearHeadModel):
        model.head = nn.Identity()  # type: ignore[assignment]
