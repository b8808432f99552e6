"""How a model wants its input: described as data, saved with every run.

The eval transform is derived from this record (see :mod:`vitrina.data.transforms`), so
preprocessing can never drift from the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Input contract of a model.

    Attributes:
        input_size: (height, width) of the tensor the network sees.
        channels: 3 for RGB, 1 for grayscale.
        mean, std: per-channel normalization (length == channels).
        crop_pct: eval resize is ``input_size / crop_pct`` on the short side, then a center crop;
            1.0 means resize straight to ``input_size`` (no crop).
        interpolation: "bilinear" or "bicubic".
        fixed_size: the network takes ``input_size`` only (a flatten + linear layer sized
            for it, as LeNet-5's ``16*5*5``); :meth:`check_size` refuses any other size.
    """

    input_size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    fixed_size: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if not self.fixed_size:  # run folders of networks that take any size stay as they were
            del d["fixed_size"]
        return d

    def check_size(
        self, size: tuple[int, int] | None, model: str, option: str = "--input-size"
    ) -> None:
        """Raise :class:`~vitrina.errors.InputSizeError` when ``size`` ((height, width), or
        None for "the model's own") is one the network of ``model`` cannot take."""
        if size is None or not self.fixed_size or tuple(size) == tuple(self.input_size):
            return
        from vitrina.errors import InputSizeError

        h, w = self.input_size
        raise InputSizeError(
            f"{model} takes {h}x{w} input only (HEIGHTxWIDTH; its first linear layer is sized "
            f"for it), not {size[0]}x{size[1]}: leave {option} out, or pick a network that "
            "takes any size (`vitrina zoo`)"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            input_size=tuple(d["input_size"]),  # type: ignore[arg-type]
            channels=int(d.get("channels", 3)),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d.get("crop_pct", 0.875)),
            interpolation=str(d.get("interpolation", "bilinear")),
            fixed_size=bool(d.get("fixed_size", False)),
            extra=dict(d.get("extra", {})),
        )
