"""Which loss an embedding run trains with when it is not told (``--loss auto``), and why.

Two families of sets, two recipes the field settled on:

* **aligned face chips** (a folder written by ``vitrina faces chips``, recognised by its
  manifest: :func:`vitrina.data.identities.is_face_chips`): **ArcFace**, the additive
  angular margin loss of face recognition (Deng et al., 2019). Measured on ORL
  (``benchmarks/embedding_transfer.py``: chips of 30 people to train, 10 never seen, as
  photographed and relit / shifted / rescaled / JPEG-compressed; two choices of people):
  against the frozen ImageNet backbone, ArcFace +11.8 / +9.9 and +8.5 / +17.1 mAP points
  (held-out / cross-domain), softmax + batch-hard triplet +12.9 / +5.3 and +8.6 / +12.6:
  level on the camera it trained on, 4.6 points better on average in other light and
  framing, and its worst figure +8.5 where the other loss's is +5.3.
* **anything else** (people, products): identity softmax + batch-hard triplet with a
  batch-norm neck, the strong re-identification baseline (Luo et al., 2019).

The run's config keeps ``auto`` (a resumed run chooses again, the same way) and its metrics
record the choice and the reason (``metrics["loss"]``, as ``metrics["trainable"]``);
``--loss`` names any loss or weighted sum instead.
"""

from __future__ import annotations

import os

from vitrina.data.identities import FACE_CHIPS_MANIFEST, is_face_chips

__all__ = ["AUTO_LOSS", "FACE_LOSS", "REID_LOSS", "choose_loss"]

#: what ``--loss`` defaults to: chosen by :func:`choose_loss`
AUTO_LOSS = "auto"
FACE_LOSS = "arcface"
REID_LOSS = "softmax+triplet-batch-hard"


def choose_loss(data_dir: str | os.PathLike[str]) -> tuple[str, str]:
    """``(loss, reason)`` for a training folder (see the module)."""
    if is_face_chips(data_dir):
        return FACE_LOSS, (
            f"auto: aligned face chips ({FACE_CHIPS_MANIFEST} of `vitrina faces chips`): "
            "ArcFace, the face-recognition loss"
        )
    return REID_LOSS, (
        "auto: identities that are not face chips: identity softmax + batch-hard triplet, "
        "the re-identification baseline"
    )
