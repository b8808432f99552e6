"""`make fuzz`: run every fuzz target for FUZZ_SECONDS (default 60) from generated seeds.

Each target keeps its corpus in ``fuzz/.corpus/<target>/`` (ignored by git) so later runs
start where earlier ones stopped; a crash or wrong acceptance is written to
``fuzz/findings/<target>-crash-<sha1>``: copy it to ``tests/fuzz_regressions/`` with a test.
Exit 1 when any target found something.
"""

from __future__ import annotations

import os
import re
import subprocess  # nosec B404 - runs our own fuzz scripts with a fixed argument list
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("fuzz_images", "fuzz_upload", "fuzz_names", "fuzz_annotations")


def main() -> int:
    sys.path.insert(0, str(HERE))
    from _common import write_annotation_seeds, write_image_seeds

    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    only = sys.argv[1:] or list(TARGETS)
    seeds = HERE / ".corpus" / "seeds"
    write_image_seeds(seeds)
    annotation_seeds = HERE / ".corpus" / "annotation-seeds"
    write_annotation_seeds(annotation_seeds)
    findings = HERE / "findings"
    findings.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]))
    failed = 0
    for target in only:
        corpus = HERE / ".corpus" / target
        corpus.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            str(HERE / f"{target}.py"),
            f"-max_total_time={seconds}",
            "-rss_limit_mb=3072",
            "-timeout=20",
            "-print_final_stats=1",
            f"-artifact_prefix={findings}/{target}-",
            str(corpus),
        ]
        if target == "fuzz_annotations":
            cmd.append(str(annotation_seeds))
        elif target != "fuzz_names":
            cmd.append(str(seeds))
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)  # nosec B603
        log = proc.stdout + proc.stderr
        (HERE / ".corpus" / f"{target}.log").write_text(log)
        execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
        cov = re.findall(r"cov: (\d+)", log)
        crashes = re.findall(r"Test unit written to (\S+)", log)
        status = "ok" if proc.returncode == 0 else f"FOUND (exit {proc.returncode})"
        print(
            f"{target}: {status}, {execs[-1] if execs else '?'} inputs in "
            f"{time.monotonic() - t0:.0f} s, coverage {cov[-1] if cov else '?'} edges, "
            f"corpus {len(list(corpus.iterdir()))} files"
        )
        for c in crashes:
            print(f"  finding: {c}")
        if proc.returncode != 0:
            failed += 1
            tail = [ln for ln in log.splitlines() if "Error" in ln or "assert" in ln.lower()]
            print("  " + "\n  ".join(tail[-6:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
