"""Where hard light puts dlib's landmarks: plain against ``flatten_landmarks`` (the default),
on ORL faces relit, and a picture of both on scikit-image's astronaut.

For every ORL photo (``../shared/data/orl_faces``) the face is found once per light by the
default detector cascade; its 5 landmarks are then predicted on the photo as it is (plain,
``FacePipeline(flatten_landmarks=False)``) and as the pipeline does by default (on the face
with its light divided out where the light is uneven). The reference is the plain landmarks
of the same photo in its own light. Reported per light: the error as a share of the distance
between the eyes' centres (NME: the worst of the 5 points), median and 90th percentile, the
share of faces whose points moved by more than 10% of it (misaligned chips), and the share
of faces whose light counted as uneven (blend weight above 0).

    python benchmarks/faces_landmarks.py [--data DIR] [--people 40]
        [--lights original,left:0.7,left:0.9,right:0.9,top:0.7,top:0.9,centre:0.8]
        [--figure docs/images/faces-landmarks-hard-light.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _common import data_dir, machine
from PIL import Image

DEFAULT_LIGHTS = "original,left:0.7,left:0.9,right:0.9,top:0.7,top:0.9,centre:0.8"
MISALIGNED = 0.10  # NME above which a chip counts as misaligned


def _relit(rgb: np.ndarray, light: str) -> np.ndarray:
    from vitrina.faces.lighting import relight

    if light == "original":
        return rgb
    kind, strength = light.split(":")
    return relight(rgb, float(strength), kind)  # type: ignore[arg-type]


def _eye_distance(points: np.ndarray) -> float:
    """dlib's 5-point order: right eye (2 corners), left eye (2 corners), nose."""
    return float(np.linalg.norm(points[0:2].mean(0) - points[2:4].mean(0)))


def measure(root: Path, people: int, lights: list[str]) -> None:
    import dlib

    from vitrina.faces.detection import FaceFinder, landmark_light_weight

    plain = FaceFinder(flatten_landmarks=False)
    flat = FaceFinder(flatten_landmarks=True)
    folders = sorted((d for d in root.glob("s*") if d.is_dir()), key=lambda d: int(d.name[1:]))
    photos = [
        np.asarray(Image.open(p).convert("RGB"))
        for d in folders[:people]
        for p in sorted(d.glob("*.pgm"))
    ]
    reference = []
    for rgb in photos:
        faces = plain.faces(Image.fromarray(rgb))
        reference.append(max(faces, key=lambda f: f.box.width * f.box.height) if faces else None)
    print(
        f"{len(photos)} ORL photos, {sum(r is not None for r in reference)} with a face in their own light"
    )
    print()
    print(
        "| light | NME plain: median / p90 | NME flattened: median / p90 | misaligned (> 10%): plain / flattened | light counted uneven |"
    )
    print("|---|---|---|---|---|")
    for light in lights:
        errs: dict[str, list[float]] = {"plain": [], "flat": []}
        uneven = 0
        for rgb, ref in zip(photos, reference, strict=True):
            if ref is None:
                continue
            img = _relit(rgb, light)
            faces = plain.faces(Image.fromarray(img))
            if not faces:
                continue
            box = max(faces, key=lambda f: f.box.width * f.box.height).box
            rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
            scale = _eye_distance(ref.landmarks)
            for name, finder in (("plain", plain), ("flat", flat)):
                points, _ = finder.align(Image.fromarray(img), box)
                errs[name].append(float(np.abs(points - ref.landmarks).max()) / scale)
            uneven += landmark_light_weight(img, rect) > 0
        p, f = np.array(errs["plain"]), np.array(errs["flat"])
        print(
            f"| {light} | {np.median(p):.3f} / {np.percentile(p, 90):.3f} "
            f"| {np.median(f):.3f} / {np.percentile(f, 90):.3f} "
            f"| {np.mean(p > MISALIGNED):.1%} / {np.mean(f > MISALIGNED):.1%} "
            f"| {uneven / max(len(p), 1):.1%} of {len(p)} |"
        )


def figure(out: Path) -> None:
    """The astronaut in her own light, lit hard from the left and from above: the plain
    landmarks (red) and the flattened ones (green), and the chips each cuts, with how far the
    worst point lies from where it is in her own light (a share of the eye distance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import data as skdata

    from vitrina.faces.pipeline import FacePipeline

    crop = np.ascontiguousarray(skdata.astronaut()[30:230, 120:320])
    plain = FacePipeline(backend="eager", workers=0, flatten_landmarks=False)
    flat = FacePipeline(backend="eager", workers=0)
    lights = [
        ("her own light", "original"),
        ("from the left, 0.9", "left:0.9"),
        ("from above, 0.9", "top:0.9"),
    ]
    fig, axes = plt.subplots(3, len(lights), figsize=(3.2 * len(lights), 9.6))
    (ref,) = plain.faces_in(crop)
    scale = _eye_distance(ref.landmarks)
    for col, (title, light) in enumerate(lights):
        img = _relit(crop, light)
        (a,), (b,) = plain.faces_in(img), flat.faces_in(img)
        ax = axes[0, col]
        ax.imshow(img)
        ax.scatter(*a.landmarks.T, s=36, c="red", marker="x", label="plain")
        ax.scatter(*b.landmarks.T, s=36, facecolors="none", edgecolors="lime", label="flattened")
        ax.set_title(title)
        for row, (face, name) in ((1, (a, "plain")), (2, (b, "flattened"))):
            nme = float(np.abs(face.landmarks - ref.landmarks).max()) / scale
            axes[row, col].imshow(face.chip)
            axes[row, col].set_title(f"chip, {name} landmarks ({nme:.0%} off)", fontsize=9)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)
    print(f"figure: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="folder per person (default ../shared/data/orl_faces)")
    ap.add_argument("--people", type=int, default=40, help="the first N people (s1..sN)")
    ap.add_argument("--lights", default=DEFAULT_LIGHTS, help="original, KIND:STRENGTH (comma list)")
    ap.add_argument("--figure", type=Path, help="also draw the astronaut's landmarks to this PNG")
    ap.add_argument("--no-measure", action="store_true", help="only the figure")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if not args.no_measure:
        measure(
            data_dir("orl_faces", args.data),
            args.people,
            [s.strip() for s in args.lights.split(",")],
        )
    if args.figure:
        figure(args.figure)


if __name__ == "__main__":
    main()
