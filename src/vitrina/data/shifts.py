"""Photos as another place would take them: the same photo relit, shifted or rescaled.

A model judged only on photos like its training ones can look better than it is: a pruned
network, for one, keeps the full one's answers on the photos it was distilled on and loses
more where the subject is moved or smaller. These make the harder copies a judgement also
looks at (``vitrina optimize --prune-max-drop``, ``benchmarks/pruning.py``):

* ``relit``: a strong light from the left, brightness falling from 100% to 30% across the
  photo;
* ``shifted``: the photo moved right and down by 20% of its size, the gap filled by
  reflection;
* ``rescaled``: the photo at 55% of its size, centred on a grey canvas of the original size
  (a smaller, blurrier subject).

Each takes and returns a PIL image of the same size, RGB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["SHIFTS", "relit", "rescaled", "shifted"]


def relit(img: Image.Image) -> Image.Image:
    """A strong light from the left: brightness falls from 100% to 30% across the photo."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    ramp = np.linspace(1.0, 0.3, a.shape[1], dtype=np.float32)[None, :, None]
    return Image.fromarray(np.clip(a * ramp, 0, 255).astype(np.uint8))


def shifted(img: Image.Image) -> Image.Image:
    """Moved right and down by 20% of its size; the gap filled by reflection."""
    a = np.asarray(img.convert("RGB"))
    dy, dx = int(0.2 * a.shape[0]), int(0.2 * a.shape[1])
    # reflection needs a pad shorter than the side: a photo of 1 or 2 pixels is edge-padded
    mode = "reflect" if dy < a.shape[0] and dx < a.shape[1] else "edge"
    padded = np.pad(a, ((dy, 0), (dx, 0), (0, 0)), mode=mode)
    return Image.fromarray(np.ascontiguousarray(padded[: a.shape[0], : a.shape[1]]))


def rescaled(img: Image.Image) -> Image.Image:
    """The photo at 55% of its size, centred on a grey canvas of the original size."""
    img = img.convert("RGB")
    small = img.resize(
        (max(1, int(img.width * 0.55)), max(1, int(img.height * 0.55))), Image.Resampling.BILINEAR
    )
    canvas = Image.new("RGB", img.size, (128, 128, 128))
    canvas.paste(small, ((img.width - small.width) // 2, (img.height - small.height) // 2))
    return canvas


#: The shifts by name, in the order reports list them.
SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "relit": relit,
    "shifted": shifted,
    "rescaled": rescaled,
}
