"""What `pip install vitrina` costs against `pip install 'vitrina[all]'`: disk, time, packages,
and how long `import vitrina` and `vitrina --help` take.

    python benchmarks/install_size.py [--out benchmarks/results/install_size.json]
    python benchmarks/install_size.py --from-env   # sizes only, in seconds, no install

Builds the wheel once (``python -m build --wheel --no-isolation``), then installs it into a
fresh virtualenv per variant with ``pip install -c constraints.txt`` (the exact pins; torch and
the other wheels come from this machine's disk as pip is configured here, so the times are
install times, not download times). Each venv is measured and deleted. Sizes are of
``site-packages``; "beyond torch" leaves out torch, its CUDA libraries (nvidia-*), triton and
torchvision, which every variant shares. Import times are medians of 5 fresh processes, each
minus the median of a bare ``python -c pass``.

``--from-env`` measures no install: it resolves the dependency closure of the core, of
``[all]`` and of each extra (pyproject.toml, markers evaluated) against the distributions
installed in this environment (``make install`` has ``[all,dev]``, at the pinned versions) and
sums the files each one's RECORD lists: the same bytes a fresh venv would hold, in a second.
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


def closure_sizes() -> dict[str, tuple[int, int, int]]:
    """``{variant: (distributions, bytes, bytes beyond torch)}`` for core, each extra and all,
    from this environment's installed distributions (see the module doc)."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = {
        k: v for k, v in project["optional-dependencies"].items() if k not in ("all", "dev", "docs")
    }

    def size(dist: md.Distribution) -> int:
        total = 0
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        return total

    def closure(reqs: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        stack = [Requirement(r) for r in reqs]
        while stack:
            req = stack.pop()
            name = canonicalize_name(req.name)
            if name in found or name == "vitrina":
                continue
            try:
                dist = md.distribution(req.name)
            except md.PackageNotFoundError:
                raise SystemExit(
                    f"{name} is not installed here: run `make install` first"
                ) from None
            found[name] = size(dist)
            for text in dist.requires or []:
                dep = Requirement(text)
                if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                    stack.append(dep)
        return found

    variants = {"core": [], **extras, "all": [r for v in extras.values() for r in v]}
    rows = {}
    for name, reqs in variants.items():
        dists = closure([*project["dependencies"], *reqs])
        beyond = sum(n for d, n in dists.items() if not d.startswith(SHARED))
        rows[name] = (len(dists), sum(dists.values()), beyond)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/install_size.json")
    ap.add_argument("--from-env", action="store_true", help="sizes from this environment")
    args = ap.parse_args()
    if args.from_env:
        rows = closure_sizes()
        core = rows["core"]
        print(
            f"{'variant':10}{'packages':>10}{'MB':>8}{'MB beyond torch':>17}{'+MB over core':>15}"
        )
        for name, (n, total, beyond) in rows.items():
            extra = (total - core[1]) / 1e6
            print(f"{name:10}{n:>10}{total / 1e6:>8.0f}{beyond / 1e6:>17.0f}{extra:>15.0f}")
        return 0
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
