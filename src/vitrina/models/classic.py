"""The models before CNNs, as vitrina models: HOG + linear SVM, SIFT bag of visual words +
linear SVM, and a perceptron on raw pixels.

They keep the one model contract (:class:`~vitrina.models.contract.VitrinaModel`), so a run
folder of any of them is read by ``predict``, ``evaluate``, ``sort``, ``embed`` and ``index``
like a CNN's:

* ``hog_svm``: ``embed`` is the HOG descriptor (Dalal & Triggs 2005; OpenCV's
  ``HOGDescriptor``: 8x8 cells, 2x2-cell blocks, 9 orientation bins, L2-Hys, the strongest
  colour channel's gradient) of the photo resized to 128x128; ``classify`` is a linear SVM's
  decision function on it.
* ``sift_bovw_svm``: ``embed`` is the bag of visual words (Csurka et al. 2004): OpenCV's SIFT
  keypoints and descriptors (RootSIFT, Arandjelović & Zisserman 2012) of the grey photo
  (short side 256), each assigned to its nearest word of a k-means vocabulary, the word
  counts as a Hellinger-normalised histogram; ``classify`` is a linear SVM on it.
* ``mlp_pixels``: a multilayer perceptron on the raw 32x32 RGB pixels (one hidden layer of
  256); plain PyTorch, trained by gradient descent like any network (and exportable).

The two SVM models are *fitted*, not trained by gradient descent (``fitted = True``):
:mod:`vitrina.training.classic` extracts the features through the engine, fits the k-means
vocabulary and scikit-learn's ``LinearSVC``, and copies the fitted arrays into tensors
(``net.vocabulary``, ``head.weight``, ``head.bias``), so the run folder holds safetensors and
JSON only, never a pickle. Their settings (cell size, vocabulary size...) are recorded in
``vitrina.json`` (``config.classic``) and :meth:`ClassicModel.configure` rebuilds them.

Their features are computed by OpenCV on the pixels, outside PyTorch: no gradients, no ONNX
export (``export_refusal`` says why), so they run on the PyTorch backends only (``eager``,
``bf16``, ``fp64``; ``auto`` keeps them on eager). A photo SIFT finds no keypoint in (a flat
image) has no bag of words: its outputs are NaN and the engine reports the photo by name as a
bad item (``nonfinite_reason``) while the run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vitrina.errors import VitrinaError, require
from vitrina.models.contract import VitrinaModel
from vitrina.models.preprocess import Preprocess

__all__ = [
    "FITTED_ARCHS",
    "HOG_PREPROCESS",
    "MLP_PIXELS_PREPROCESS",
    "SIFT_PREPROCESS",
    "ClassicModel",
    "HogFeatures",
    "HogSvm",
    "PixelMLP",
    "SiftBovwFeatures",
    "SiftBovwSvm",
    "to_uint8_images",
]

#: The classic models fitted by scikit-learn rather than trained by gradient descent.
FITTED_ARCHS = ("hog_svm", "sift_bovw_svm")

HOG_PREPROCESS = Preprocess(
    input_size=(128, 128), channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0
)
SIFT_PREPROCESS = Preprocess(
    input_size=(256, 256), channels=1, mean=(0.0,), std=(1.0,), crop_pct=1.0
)
MLP_PIXELS_PREPROCESS = Preprocess(
    input_size=(32, 32), channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0
)

_EXPORT_REFUSAL = (
    "its features are computed by OpenCV outside PyTorch (no ONNX graph can hold them); "
    "it runs on the PyTorch backends: eager, bf16, fp64"
)


def to_uint8_images(x: torch.Tensor, pre: Preprocess) -> list[np.ndarray]:
    """Normalised ``(B, C, H, W)`` model inputs -> the pixels they came from: ``(H, W)`` grey
    or ``(H, W, 3)`` RGB uint8 arrays (the normalisation of ``pre`` undone)."""
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.detach().float().cpu() * std + mean).mul_(255.0).round_().clamp_(0, 255)
    a = pixels.to(torch.uint8).numpy()
    if a.shape[1] == 1:
        return [np.ascontiguousarray(im[0]) for im in a]
    return [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in a]


# ------------------------------------------------------------------------------ features
class HogFeatures(nn.Module):
    """OpenCV HOG descriptor of the whole image (no parameters).

    OpenCV computes the gradient of each colour channel and keeps the strongest (as Dalal &
    Triggs did), histograms it in ``bins`` unsigned orientations per ``cell`` x ``cell``
    pixels, and L2-Hys normalises blocks of ``block`` x ``block`` cells with a stride of one
    cell: ``(H/cell - block + 1) x (W/cell - block + 1) x block² x bins`` numbers (8,100 at
    128x128)."""

    def __init__(self, size: tuple[int, int], cell: int = 8, block: int = 2, bins: int = 9):
        super().__init__()
        h, w = int(size[0]), int(size[1])
        if cell < 2 or block < 1 or bins < 2 or h % cell or w % cell:
            raise VitrinaError(
                f"HOG: the image ({h}x{w}) must be a whole number of cells ({cell} px), "
                f"with block >= 1 and bins >= 2"
            )
        if h // cell < block or w // cell < block:
            raise VitrinaError(f"HOG: {h}x{w} is smaller than one block of {block}x{cell} px")
        self.size, self.cell, self.block, self.bins = (h, w), int(cell), int(block), int(bins)
        self.dim = int(self._descriptor().getDescriptorSize())

    def _descriptor(self) -> Any:
        cv2 = require("cv2", "classic", "the HOG/SIFT classic models")

        h, w = self.size
        c = self.cell
        # A fresh descriptor per call: cv2 objects neither pickle nor deep-copy.
        return cv2.HOGDescriptor(
            (w, h), (c * self.block, c * self.block), (c, c), (c, c), self.bins
        )

    def settings(self) -> dict[str, Any]:
        return {"size": list(self.size), "cell": self.cell, "block": self.block, "bins": self.bins}

    def describe(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        hog = self._descriptor()
        return [hog.compute(im).reshape(-1) for im in images]


class SiftBovwFeatures(nn.Module):
    """Bag of visual words over RootSIFT descriptors; the vocabulary is a buffer (``words`` x
    128) fitted by k-means (:meth:`fit_vocabulary`)."""

    def __init__(self, words: int = 256, max_keypoints: int = 500) -> None:
        super().__init__()
        if words < 2 or max_keypoints < 1:
            raise VitrinaError("SIFT bag of words: need words >= 2, max_keypoints >= 1")
        self.words, self.max_keypoints = int(words), int(max_keypoints)
        self.register_buffer("vocabulary", torch.zeros(self.words, 128))
        self.dim = self.words

    def settings(self) -> dict[str, Any]:
        return {"words": self.words, "max_keypoints": self.max_keypoints}

    def descriptors(self, image: np.ndarray) -> np.ndarray:
        """RootSIFT descriptors ``(n, 128)`` float32 of a grey uint8 image (``n`` may be 0):
        OpenCV's SIFT, each descriptor L1-normalised and square-rooted."""
        cv2 = require("cv2", "classic", "the HOG/SIFT classic models")

        sift = cv2.SIFT_create(nfeatures=self.max_keypoints)
        _, d = sift.detectAndCompute(image, None)
        if d is None or not len(d):
            return np.zeros((0, 128), np.float32)
        d = d.astype(np.float32)
        d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
        return np.sqrt(d)

    def histogram(self, descriptors: np.ndarray) -> np.ndarray | None:
        """Hellinger-normalised word counts (``words``,), or ``None`` without descriptors."""
        if not len(descriptors):
            return None
        d = torch.from_numpy(descriptors)
        vocab = self.vocabulary.detach().float().cpu()
        nearest = torch.cdist(d, vocab).argmin(dim=1)
        counts = torch.bincount(nearest, minlength=self.words).double()
        h = torch.sqrt(counts / counts.sum())
        return (h / h.norm().clamp_min(1e-12)).float().numpy()

    def describe(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        return [self.histogram(self.descriptors(im)) for im in images]

    @torch.no_grad()
    def fit_vocabulary(
        self, descriptors: list[np.ndarray], *, seed: int = 0, max_descriptors: int = 100_000
    ) -> int:
        """k-means (scikit-learn's ``MiniBatchKMeans``, seeded) over the training photos'
        descriptors (a seeded sample of at most ``max_descriptors``); returns how many were
        used. Raises :class:`VitrinaError` when there are fewer descriptors than words."""
        from sklearn.cluster import MiniBatchKMeans

        pool = [d for d in descriptors if len(d)]
        if not pool:
            raise VitrinaError("SIFT found no keypoint in any training photo: no vocabulary")
        x = np.concatenate(pool)
        if len(x) < self.words:
            raise VitrinaError(
                f"only {len(x)} SIFT descriptors in the training photos, fewer than the "
                f"{self.words} visual words: give more (or more textured) photos"
            )
        rng = np.random.default_rng(seed)
        if len(x) > max_descriptors:
            x = x[rng.choice(len(x), max_descriptors, replace=False)]
        km = MiniBatchKMeans(
            n_clusters=self.words,
            random_state=seed,
            batch_size=4096,
            n_init=3,
            max_no_improvement=20,
        ).fit(x)
        self.vocabulary.copy_(torch.from_numpy(km.cluster_centers_.astype(np.float32)))
        return len(x)


# ------------------------------------------------------------------------------ models
class ClassicModel(VitrinaModel):
    """Hand-designed features (``net``, computed by OpenCV) + a linear head (a linear SVM's
    decision function once fitted). See the module docstring."""

    #: fitted by :mod:`vitrina.training.classic` (scikit-learn), not by gradient descent
    fitted: ClassVar[bool] = True
    #: why the engine's ONNX backends and ``vitrina export`` refuse this model
    export_refusal: ClassVar[str | None] = _EXPORT_REFUSAL
    #: the engine backends that can run it (the PyTorch ones)
    backends: ClassVar[tuple[str, ...]] = ("eager", "bf16", "fp64")
    #: why the engine reports a photo whose outputs are NaN
    nonfinite_reason: ClassVar[str] = "the classic features cannot describe this photo"
    #: the library that computes the features (for messages and the zoo)
    library: ClassVar[str] = "OpenCV"
    _layout_prefixes = ("net", "head")

    def __init__(
        self, features: nn.Module, *, arch: str, preprocess: Preprocess, num_classes: int
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(
            features,
            arch=arch,
            preprocess=preprocess,
            num_classes=num_classes,
            num_features=int(features.dim),
        )
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # ---------------------------------------------------------------- the contract
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The descriptor of each image ``(B, num_features)``; NaN rows for images the
        features cannot describe."""
        if x.is_meta:  # shapes only (the zoo counts sizes on the meta device)
            return torch.empty(len(x), self.num_features, device=x.device, dtype=x.dtype)
        rows = self.net.describe(to_uint8_images(x, self.preprocess))
        out = torch.full((len(rows), self.num_features), float("nan"))
        for i, r in enumerate(rows):
            if r is not None:
                out[i] = torch.from_numpy(np.asarray(r, dtype=np.float32))
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return out.to(device=x.device, dtype=dtype)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.embed(x)
        return self.head(feats.to(self.head.weight.dtype))

    def head_module(self) -> nn.Module:
        return self.head

    def _replace_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # ---------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        """What ``vitrina.json`` records (``config.classic``) to rebuild this model."""
        return {"features": self.net.settings(), "input_size": list(self.preprocess.input_size)}

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Rebuild the features from recorded :meth:`settings` (a run folder's)."""
        raise NotImplementedError

    def _set_features(self, features: nn.Module) -> None:
        self.net = features
        if int(features.dim) != self.num_features:
            self.num_features = int(features.dim)
            self._replace_head(self.num_classes)

    @torch.no_grad()
    def set_linear_head(
        self, coef: np.ndarray, intercept: np.ndarray, *, temperature: float = 1.0
    ) -> None:
        """Copy a fitted linear classifier (scikit-learn's ``coef_`` ``(K, D)`` and
        ``intercept_`` ``(K,)``; a binary one has one row, the positive class's) into the
        head, scaled by ``temperature`` (calibrated probabilities; argmax unchanged)."""
        w = np.asarray(coef, dtype=np.float64)
        b = np.asarray(intercept, dtype=np.float64).reshape(-1)
        if w.ndim != 2 or w.shape[1] != self.num_features or len(b) != len(w):
            raise VitrinaError(
                f"{self.arch}: a linear classifier of shape {w.shape} does not fit "
                f"{self.num_features} features"
            )
        if len(w) == 1 and self.num_classes == 2:  # decision d: logits (-d/2, d/2)
            w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        if len(w) != self.num_classes:
            raise VitrinaError(
                f"{self.arch}: {len(w)} classifier rows for {self.num_classes} classes"
            )
        dtype = self.head.weight.dtype
        self.head.weight.copy_(torch.from_numpy(w * temperature).to(dtype))
        self.head.bias.copy_(torch.from_numpy(b * temperature).to(dtype))

    def to_vitrina_layout(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sd = dict(state_dict)
        if sd and all(k.split(".", 1)[0] in self._layout_prefixes for k in sd):
            return sd
        return super().to_vitrina_layout(sd)


class HogSvm(ClassicModel):
    """HOG descriptor + linear SVM (``hog_svm``)."""

    nonfinite_reason = "the HOG descriptor is not finite for this photo"

    def __init__(self, num_classes: int = 2, *, cell: int = 8, block: int = 2, bins: int = 9):
        pre = HOG_PREPROCESS
        super().__init__(
            HogFeatures(pre.input_size, cell, block, bins),
            arch="hog_svm",
            preprocess=pre,
            num_classes=num_classes,
        )

    def configure(self, settings: Mapping[str, Any]) -> None:
        f = dict(settings.get("features", {}))
        size = tuple(settings.get("input_size", self.preprocess.input_size))
        self._set_features(
            HogFeatures(size, f.get("cell", 8), f.get("block", 2), f.get("bins", 9))  # type: ignore[arg-type]
        )


class SiftBovwSvm(ClassicModel):
    """SIFT bag of visual words + linear SVM (``sift_bovw_svm``)."""

    nonfinite_reason = (
        "no SIFT keypoints: nothing for the bag of visual words to describe "
        "(a flat or featureless photo)"
    )

    def __init__(self, num_classes: int = 2, *, words: int = 256, max_keypoints: int = 500):
        super().__init__(
            SiftBovwFeatures(words, max_keypoints),
            arch="sift_bovw_svm",
            preprocess=SIFT_PREPROCESS,
            num_classes=num_classes,
        )

    def configure(self, settings: Mapping[str, Any]) -> None:
        f = dict(settings.get("features", {}))
        self._set_features(SiftBovwFeatures(f.get("words", 256), f.get("max_keypoints", 500)))

    def local_descriptors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The RootSIFT descriptors of each image: a list of ``(n_i, 128)`` tensors (the
        engine output ``"local_descriptors"``, what the vocabulary is fitted on)."""
        return [
            torch.from_numpy(self.net.descriptors(im)) for im in to_uint8_images(x, self.preprocess)
        ]


class PixelMLP(nn.Module):
    """The perceptron on raw pixels: flatten, one hidden layer (ReLU), a linear classifier."""

    def __init__(self, num_classes: int = 10, *, pixels: int = 3 * 32 * 32, hidden: int = 256):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.hidden = nn.Sequential(nn.Flatten(1), nn.Linear(pixels, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(x))
