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

**How long.** ArcFace learns a weight vector per identity under an angular margin at scale
64; on a small set it is still improving when a softmax + triplet run has settled (on ORL,
epoch 20 of 20 was the best epoch, the training loss still falling fast). So a run whose
loss holds an ArcFace term trains :data:`ARCFACE_EPOCHS` epochs unless ``--epochs`` says
otherwise (:func:`default_epochs`), every other loss :data:`DEFAULT_EPOCHS`. Measured on the
same benchmark, three choices of people, against the frozen backbone (held-out /
cross-domain mAP points): 20 epochs +11.8 / +9.9, +8.5 / +17.1 and +9.1 / +11.2; 40 epochs
+15.8 / +11.7, +10.8 / +18.1 and +12.8 / +14.9 (7.2-7.6 minutes on 2 CPU cores, against
3.9-4.8).
"""

from __future__ import annotations

import os

from vitrina.data.identities import FACE_CHIPS_MANIFEST, is_face_chips

__all__ = [
    "ARCFACE_EPOCHS",
    "AUTO_LOSS",
    "DEFAULT_EPOCHS",
    "FACE_LOSS",
    "REID_LOSS",
    "choose_loss",
    "default_epochs",
]

#: what ``--loss`` defaults to: chosen by :func:`choose_loss`
AUTO_LOSS = "auto"
FACE_LOSS = "arcface"
REID_LOSS = "softmax+triplet-batch-hard"
#: epochs of a run whose loss has no ArcFace term, and of one that has (:func:`default_epochs`)
DEFAULT_EPOCHS = 20
ARCFACE_EPOCHS = 40


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


def default_epochs(loss: str) -> int:
    """Epochs when ``--epochs`` is not given, for a resolved loss spec (not ``auto``):
    :data:`ARCFACE_EPOCHS` when it holds an ArcFace term, else :data:`DEFAULT_EPOCHS` (see
    the module)."""
    from vitrina.losses import parse_loss_spec

    if any(t.name == FACE_LOSS for t in parse_loss_spec(loss)):
        return ARCFACE_EPOCHS
    return DEFAULT_EPOCHS
