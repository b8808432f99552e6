"""Light directions of face vectors, and the projection that removes them (nuisance attribute
projection, as in speaker verification).

A lamp beside a door camera moves a face's vector in much the same few directions whoever the
person is. Relighting each enrolled face from the left and from the right
(:func:`~vitrina.faces.lighting.relight` at :data:`LIGHTS`) and describing the copies gives,
per face, the differences from its own vector; their ``dims`` main directions (an SVD) are the
light's. Every vector, of the gallery and of the probes, then has those directions projected
out before distances are taken: ``x - (x @ B.T) @ B`` for the ``(dims, D)`` orthonormal basis
``B``. The identity is what is left, and a face half in shadow lands nearer its own templates.

:meth:`vitrina.faces.Gallery.calibrate` learns the basis from the gallery's enrolled chips
(``light_dims``) and stores it with the decision rule, whose threshold is solved on projected
vectors; the gallery's own vectors are never changed.

Measured (``benchmarks/faces_light.py``, README "Faces in hard light"): 3 of dlib's 128
dimensions name more faces in every relit light, centre light and light from above included
although only side light is learned, and keep strangers out in the photos' own light; 8 let
strangers in. Light from above at 0.9 (brow burnt out, mouth in black shadow) is beyond it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vitrina.errors import DataError

__all__ = ["DEFAULT_DIMS", "LIGHTS", "MAX_FACES", "learn_light_basis", "project", "spaced"]

#: The relightings whose effect is learned: from the left and the right, a soft to a hard
#: shadow (centre light is not learned; the benchmark measures it as a light never seen).
LIGHTS: tuple[tuple[str, float], ...] = tuple(
    (kind, s) for kind in ("left", "right") for s in (0.5, 0.7, 0.9)
)
#: The number of directions measured to help (``vitrina faces calibrate --light-dims 3``; the
#: option itself is off, 0, unless asked for: see the README, "Faces in hard light").
DEFAULT_DIMS = 3
#: A large gallery's light is learned from this many of its faces, evenly spaced over it
#: (each is described 7 times; the light's few directions need no more).
MAX_FACES = 300


def project(x: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """``x`` (``(D,)`` or ``(N, D)``) with the rows of ``basis`` (``(k, D)``, orthonormal)
    projected out; ``x`` itself when ``basis`` is None or empty."""
    if basis is None or len(basis) == 0:
        return x
    b = np.asarray(basis, dtype=np.float64)
    a = np.asarray(x, dtype=np.float64)
    return a - (a @ b.T) @ b


def spaced(items: Sequence, limit: int = MAX_FACES) -> list:
    """At most ``limit`` of ``items``, evenly spaced (all of them when there are no more)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def learn_light_basis(
    chips: Sequence[np.ndarray],
    describe: Callable[[list[np.ndarray]], np.ndarray],
    dims: int = DEFAULT_DIMS,
    *,
    correct: Callable[[np.ndarray], np.ndarray] | None = None,
    lights: Sequence[tuple[str, float]] = LIGHTS,
) -> np.ndarray:
    """The ``(dims, D)`` orthonormal basis of the directions relighting moves face vectors.

    ``chips``: aligned face chips (``(S, S, 3)`` uint8), each lit as enrolled; ``describe``:
    chips -> ``(N, D)`` vectors (a :class:`~vitrina.faces.FacePipeline`'s ``describe``);
    ``correct``: the pipeline's own correction of a chip before it is described (e.g.
    :func:`~vitrina.faces.lighting.flatten_shading` for a gallery that flattens), applied to
    each chip and each relit copy as the pipeline would apply it to a photo taken in that
    light."""
    from vitrina.faces.lighting import relight

    if not isinstance(dims, int) or dims < 1:
        raise DataError(f"light dims must be a whole number of at least 1, not {dims!r}")
    if not chips:
        raise DataError("learning the light directions needs enrolled faces (their chips)")
    fix = correct or (lambda c: c)
    # corrected too: a gallery's stored chips already are (correcting twice changes nothing),
    # chips straight from the aligner are not
    base = np.asarray(describe([fix(c) for c in chips]), dtype=np.float64)
    if dims >= base.shape[1]:
        raise DataError(
            f"light dims must be fewer than the vectors' {base.shape[1]} dimensions, not {dims}"
        )
    relit = [fix(relight(c, s, kind)) for c in chips for kind, s in lights]  # type: ignore[arg-type]
    moved = np.asarray(describe(relit), dtype=np.float64).reshape(len(chips), len(lights), -1)
    diff = (moved - base[:, None, :]).reshape(-1, base.shape[1])
    _, _, vt = np.linalg.svd(diff, full_matrices=False)
    return vt[:dims].astype(np.float64)
