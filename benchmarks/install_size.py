"""What `pip install vitrina` costs against `pip install 'vitrina[all]'`: disk, time, packages,
and how long `import vitrina` and `vitrina --help` take.

    python benchmarks/install_size.py [--out benchmarks/results/install_size.json]

Builds the wheel once (``python -m build --wheel --no-isolation``), then installs it into a
fresh virtualenv per variant with ``pip install -c constraints.txt`` (the exact pins; torch and
the other wheels come from this machine's disk as pip is configured here, so the times are
install times, not download times). Each venv is measured and deleted. Sizes are of
``site-packages``; "beyond torch" leaves out torch, its CUDA libraries (nvidia-*), triton and
torchvision, which every variant shares. Import times are medians of 5 fresh processes, each
minus the median of a bare ``python -c pass``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("torch", "nvidia", "triton", "torchvision", "cuda")  # every variant has them


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def sizes(venv: Path) -> tuple[int, int]:
    """(all of site-packages, the part beyond torch and its CUDA libraries) in bytes."""
    sp = site_packages(venv)
    total = beyond = 0
    for entry in sp.iterdir():
        n = tree_size(entry) if entry.is_dir() else entry.stat().st_size
        total += n
        if not entry.name.lower().startswith(SHARED):
            beyond += n
    return total, beyond


def median_seconds(cmd: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, requirement: str, work: Path) -> dict:
    venv = work / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = str(venv / "bin/python")
    t0 = time.perf_counter()
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", requirement],
        check=True,
    )
    seconds = time.perf_counter() - t0
    total, beyond = sizes(venv)
    frozen = subprocess.run(
        [py, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout.split()
    bare = median_seconds([py, "-c", "pass"])
    row = {
        "variant": name,
        "install_s": round(seconds, 1),
        "site_packages_mb": round(total / 1e6),
        "beyond_torch_mb": round(beyond / 1e6),
        "distributions": len(frozen),
        "import_vitrina_s": round(median_seconds([py, "-c", "import vitrina"]) - bare, 3),
        "help_s": round(median_seconds([str(venv / "bin/vitrina"), "--help"]) - bare, 2),
    }
    shutil.rmtree(venv)
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/install_size.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitrina-install-size-"))
    try:
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # no stale modules in the wheel
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", work, ROOT],
            check=True,
            capture_output=True,
        )
        wheel = next(work.glob("vitrina-*.whl"))
        rows = [measure("core", str(wheel), work), measure("all", f"{wheel}[all]", work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    core, full = rows
    print(f"\n{'':24}{'core':>10}{'[all]':>10}{'all/core':>10}")
    for key in ("site_packages_mb", "beyond_torch_mb", "distributions", "install_s"):
        print(f"{key:24}{core[key]:>10}{full[key]:>10}{full[key] / core[key]:>10.2f}")
    for key in ("import_vitrina_s", "help_s"):
        print(f"{key:24}{core[key]:>10}{full[key]:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
