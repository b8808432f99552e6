"""The fixed start-up cost of `vitrina sort` before its first batch, step by step.

A fresh interpreter does what ``vitrina sort`` does, marking wall and CPU time after each
step: the command line's imports, the sort module, the run folder (model and weights), the
engine with ``--backend auto``, and the first result (decode threads, the backend built
from its caches — the IR, the compiled blob, ``auto``'s decision — and one batch). The
first launch fills the caches (as a user's first run); the next ones count.

    python benchmarks/startup.py --model RUN --photos DIR [--launches 3] [--before REV]

Target (issue 17): under 1.5 s before the first batch (imports, workers, the auto trial when
cached).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import checkout_src, cpu_flags, env_with_src, machine

TARGET = 1.5

CHILD = r"""
import json, sys, time
t0w, t0c = time.perf_counter(), time.process_time()
marks = []
def mark(step):
    marks.append((step, time.perf_counter() - t0w, time.process_time() - t0c))
import vitrina.cli
vitrina.cli._register()
mark("command line imports")
from vitrina.classify.sort import sort_folder
from vitrina.engine import Engine, Logits
mark("sort and engine imports")
from vitrina.classify.classifier import load
clf = load(sys.argv[1], deferred=True)  # as vitrina sort loads it
mark("run folder loaded")
eng = Engine(clf.model, backend="auto", batch_size=16)
mark("engine built")
from pathlib import Path
photos = sorted(
    p for p in Path(sys.argv[2]).rglob("*")
    if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
)[:48]
if not photos:
    sys.exit(f"no photos (jpg, png, webp) under {sys.argv[2]}")
results = eng.run(Logits(), photos)
next(results)
mark("first batch done")
for _ in results:
    pass
print(json.dumps({
    "marks": marks,
    "backend": eng.describe(),
    "network_built": bool(getattr(clf.model, "built", True)),
    "torch_imported": "torch" in sys.modules,
}))
"""


def launch(model: str, photos: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, photos], capture_output=True, text=True, env=env
    )
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, runs: list[dict]) -> float:
    """Print one contender's medians; return its time to the first batch."""
    built = runs[-1].get("network_built")
    imported = runs[-1].get("torch_imported")
    print(f"\n{name}: backend {runs[-1]['backend']}")
    print(
        "  PyTorch network: "
        + ("built" if built else "never built (the backend ran its own compiled copy)")
    )
    print("  import torch: " + ("paid" if imported else "never (the run is numpy to the runtime)"))
    print(f"  median of {len(runs)} launches, cumulative seconds:   wall    cpu")
    for k, (step, _, _) in enumerate(runs[0]["marks"]):
        wall = statistics.median(r["marks"][k][1] for r in runs)
        cpu = statistics.median(r["marks"][k][2] for r in runs)
        print(f"    {step:<28} {wall:7.2f} {cpu:7.2f}")
    return statistics.median(r["marks"][-1][1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a run folder")
    ap.add_argument("--photos", required=True, help="a folder of photos (48 are used)")
    ap.add_argument("--launches", type=int, default=3, help="timed launches after the first")
    ap.add_argument(
        "--before",
        metavar="REV",
        help="also launch the code of this git revision, alternating with this checkout",
    )
    args = ap.parse_args()
    print(f"machine: {machine()}; CPU flags: {cpu_flags()}")
    with tempfile.TemporaryDirectory(prefix="vitrina-startup-") as tmp:
        envs = {"now": {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}}
        if args.before:
            envs[args.before] = env_with_src(checkout_src(args.before, Path(tmp)))
        runs: dict[str, list[dict]] = {name: [] for name in envs}
        for i in range(args.launches + 1):
            for name, env in envs.items():
                out = launch(args.model, args.photos, env)
                if i == 0:
                    first = out["marks"][-1][1]
                    print(
                        f"{name}: first launch (fills the caches): {first:.2f} s to the first batch"
                    )
                else:
                    runs[name].append(out)
    totals = {name: report(name, r) for name, r in runs.items()}
    total = totals["now"]
    verdict = "met" if total < TARGET else "MISSED"
    print(f"\ntarget: first batch within {TARGET} s of launch: {verdict} ({total:.2f} s)")
    if args.before:
        print(f"now {totals[args.before] / total:.2f}x faster than {args.before} "
              f"({totals[args.before]:.2f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
