"""The `face_recognition` package's side of benchmarks/faces_openset.py.

Runs in its own virtual environment (face_recognition imports pkg_resources and would pull the
dlib source package; see faces_openset.py, which creates that venv). Reads a protocol JSON
(``{"enroll": {name: [paths]}, "probes": [paths], "tolerance": 0.6}``) on stdin, answers on
stdout with one JSON object: for each probe the name (or "unknown", or "no-face") chosen the
way face_recognition's documentation does it — nearest known encoding, accepted when its
distance <= tolerance — and the seconds spent detecting + encoding (faces per second).
"""

from __future__ import annotations

import json
import sys
import time

import face_recognition
import numpy as np


def encodings(path: str) -> list[np.ndarray]:
    img = face_recognition.load_image_file(path)
    boxes = face_recognition.face_locations(img)  # HOG, upsample 1 (the package's default)
    return face_recognition.face_encodings(img, boxes)


def main() -> None:
    proto = json.load(sys.stdin)
    tol = float(proto.get("tolerance", 0.6))
    known, names = [], []
    t0 = time.perf_counter()
    n_faces = 0
    enroll_no_face = 0
    for name, paths in proto["enroll"].items():
        for p in paths:
            enc = encodings(p)
            n_faces += len(enc)
            if not enc:
                enroll_no_face += 1
                continue
            known.append(enc[0])
            names.append(name)
    answers = []
    for p in proto["probes"]:
        enc = encodings(p)
        n_faces += len(enc)
        if not enc:
            answers.append({"path": p, "name": "no-face", "nearest": None, "distance": None})
            continue
        d = face_recognition.face_distance(known, enc[0])
        i = int(np.argmin(d))
        name = names[i] if d[i] <= tol else "unknown"
        answers.append({"path": p, "name": name, "nearest": names[i], "distance": float(d[i])})
    secs = time.perf_counter() - t0
    json.dump(
        {
            "answers": answers,
            "seconds": secs,
            "faces": n_faces,
            "photos": sum(len(v) for v in proto["enroll"].values()) + len(proto["probes"]),
            "enroll_no_face": enroll_no_face,
            "version": face_recognition.__version__,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
