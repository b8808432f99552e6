"""How long `vitrina --help` (and a command's `--help`) takes, against a baseline commit.

Every command module is imported when `vitrina` starts, so anything they import at module
level is paid by every command, `--help` included. This runs the working tree's CLI and the
CLI of ``--baseline`` (a git ref, extracted to a temporary folder) alternately, ``--runs``
times each, in fresh interpreters, and prints the median wall and CPU time of each and the
ratio, plus whether torch was imported.

    python benchmarks/cli_startup.py --baseline afbda30 --runs 21
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys\n"
    "from vitrina.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))\n"
    "sys.exit(code)\n"
)


def extract(ref: str, dest: Path) -> Path:
    """``src/`` of ``ref`` under ``dest`` (git archive, no checkout touched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    tar = dest / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest / "src"


def once(src: Path, args: list[str]) -> tuple[float, float, bool]:
    """(wall s, CPU s of the child, torch imported) for one fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"error: {' '.join(args)} exited {res.returncode}: {res.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, "TORCH=1" in res.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git ref to compare with")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cases = [["--help"], ["train", "--help"], ["faces", "enroll", "--help"]]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": extract(a.baseline, Path(tmp)), "this tree": ROOT / "src"}
        rows = []
        for args in cases:
            samples: dict[str, list[tuple[float, float, bool]]] = {k: [] for k in trees}
            once(trees["this tree"], args)  # warm the file cache for both
            once(trees["baseline"], args)
            for _ in range(a.runs):  # alternate, so load on the machine hits both alike
                for name, src in trees.items():
                    samples[name].append(once(src, args))
            row: dict[str, object] = {"command": "vitrina " + " ".join(args)}
            for name, s in samples.items():
                row[name] = {
                    "wall_s": statistics.median(x[0] for x in s),
                    "cpu_s": statistics.median(x[1] for x in s),
                    "torch": any(x[2] for x in s),
                }
            b, t = row["baseline"], row["this tree"]
            row["cpu_ratio"] = t["cpu_s"] / b["cpu_s"]  # type: ignore[index]
            row["wall_ratio"] = t["wall_s"] / b["wall_s"]  # type: ignore[index]
            rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"baseline {a.baseline}, {a.runs} runs each, medians (CPU = user + sys of the child)")
    for r in rows:
        b, t = r["baseline"], r["this tree"]
        print(
            f"{r['command']:<32} baseline {b['wall_s']:.3f} s wall / {b['cpu_s']:.3f} s CPU"
            f"{' (torch)' if b['torch'] else ''};  this tree {t['wall_s']:.3f} s / "
            f"{t['cpu_s']:.3f} s{' (torch)' if t['torch'] else ''};  CPU ratio "
            f"{r['cpu_ratio']:.2f}, wall ratio {r['wall_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
