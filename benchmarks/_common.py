"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def data_dir(sub: str, given: str | None) -> Path:
    root = Path(given) if given else (DEFAULT_DATA / sub).resolve()
    if not root.is_dir():
        sys.exit(f"error: {root}: data folder not found (pass --data DIR)")
    return root


def cpu_flags() -> str:
    """The CPU's vector and matrix units that decide which fast path wins (from /proc/cpuinfo)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in have) or "none of " + "/".join(wanted)
    except OSError:
        pass
    return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()} (flags: {cpu_flags()}), {cores} cores, {gpu}, torch {torch.__version__}"


def paths_by_class(scan) -> list[list[Path]]:
    """The photo paths of a ``scan_folder`` result, one list per class, in class order."""
    return [[s.path for s in scan.samples if s.label == c] for c in range(len(scan.classes))]


def link_subset(files: list[Path], dest: Path) -> Path:
    """A folder of symlinks to ``files`` (class sub-folders preserved): no copying of data."""
    for f in files:
        target = dest / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f.resolve())
    return dest


def checkout_src(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev`` of this repository unpacked into ``into`` (for timing
    the code before a change in the same run; no worktree or branch is touched)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def env_with_src(src: Path | None) -> dict[str, str]:
    """The environment for a subprocess importing vitrina from ``src`` (None: this checkout)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def labelled_and_heldout(data: str | None, per_class: int, heldout: int, work: Path):
    """Two folders of links into the cats/dogs photos (or ``data``): the first ``per_class``
    photos of each class to train on, the next ``heldout`` of each to measure on."""
    from vitrina.data import scan_folder

    by_class = paths_by_class(scan_folder(data_dir("cats_dogs", data)))
    n = per_class
    labelled = link_subset([p for ps in by_class for p in ps[:n]], work / "labelled")
    held = link_subset([p for ps in by_class for p in ps[n : n + heldout]], work / "heldout")
    return labelled, held


def print_against_baseline(rows, header: str, baseline: str, digits: int = 1) -> None:
    """A Markdown table of ``(command, contender, resolved to, seconds, quality)`` rows, each
    contender against the ``baseline`` row of its command (trained first): how much faster,
    and the quality's change in points. ``header``: the contender column's title."""
    print(f"\n| command | {header} | resolved to | training s | quality | vs {baseline} |")
    print("|---|---|---|---|---|---|")
    base: dict[str, tuple[float, float]] = {}
    for cmd, who, chosen, secs, q in rows:
        if who == baseline:
            base[cmd] = (secs, q)
            vs = ""
        else:
            s0, q0 = base[cmd]
            vs = f"{s0 / secs:.2f}x faster, {(q - q0) * 100:+.{digits}f} points"
        print(f"| {cmd} | {who} | {chosen} | {secs:.0f} | {q:.4f} | {vs} |")
