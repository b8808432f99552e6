"""Explain: what the network looks at, and what its neurons respond to.

* :mod:`vitrina.explain.attribution` — heat maps of one answer: the Grad-CAM family
  (pytorch-grad-cam) and gradient / occlusion attributions (captum); ``explain_similarity``
  for why two images match under an embedding. Arrays in [0, 1] aligned to the input photo.
* :mod:`vitrina.explain.layers` — first-layer filters and feature maps, layer by layer.
* :mod:`vitrina.explain.featureviz` — images synthesised to excite a channel or a class
  (feature visualization) and DeepDream.

>>> from vitrina.explain import explain, overlay                       # doctest: +SKIP
>>> ex = explain(model, "cat.jpg", "gradcam")                           # doctest: +SKIP
>>> ex.heatmap.shape, ex.label, ex.probability                          # doctest: +SKIP
"""

from vitrina.explain.attribution import (
    METHODS,
    Explanation,
    explain,
    explain_batch,
    explain_similarity,
    overlay,
)
from vitrina.explain.folder import FolderExplanation, explain_photos

__all__ = [
    "METHODS",
    "Explanation",
    "FolderExplanation",
    "explain",
    "explain_batch",
    "explain_photos",
    "explain_similarity",
    "overlay",
]
