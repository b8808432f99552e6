"""`make lint`'s dependency audit: pip-audit over the exact pins of ``constraints.txt``.

Fails (exit 1) when a pinned release has a known vulnerability. When the vulnerability
service cannot be reached (offline, or a mirror that does not serve PyPI's JSON API, where
pip-audit would print "No known vulnerabilities found" after auditing nothing), it says so in
one line and exits 0: an unreachable service is not a clean bill of health, and not a broken
build either.

    python tools/audit_constraints.py [constraints.txt] [--service pypi|osv]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess  # nosec B404 - runs pip-audit, a fixed argument list, no shell
import sys
from pathlib import Path

_OFFLINE_HINTS = (
    "ConnectionError",
    "NameResolutionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "timed out",
    "Network is unreachable",
    "ProxyError",
    "SSLError",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("constraints", nargs="?", default="constraints.txt")
    ap.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    ap.add_argument("--timeout", type=int, default=15, help="seconds per request")
    args = ap.parse_args(argv)
    exe = shutil.which("pip-audit") or str(Path(sys.executable).with_name("pip-audit"))
    cmd = [
        exe,
        "-r",
        args.constraints,
        "--no-deps",  # every line is an exact pin: audit those releases, resolve nothing
        "--disable-pip",
        "--progress-spinner",
        "off",
        "--format",
        "json",
        "--vulnerability-service",
        args.service,
        "--timeout",
        str(args.timeout),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # nosec B603
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        if any(h in proc.stderr for h in _OFFLINE_HINTS):
            print(
                f"pip-audit: the {args.service} vulnerability service cannot be reached; "
                f"{args.constraints} NOT audited (not failing the build)"
            )
            return 0
        sys.stderr.write(proc.stderr[-4000:])
        print(f"pip-audit failed (exit {proc.returncode}); see above", file=sys.stderr)
        return 1
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = [d for d in deps if not d.get("skip_reason")]
    vulnerable = [d for d in audited if d.get("vulns")]
    for d in vulnerable:
        for v in d["vulns"]:
            fix = ", ".join(v.get("fix_versions") or []) or "no fixed release"
            print(f"{d['name']}=={d['version']}: {v['id']} (fixed in: {fix})")
    if deps and not audited:
        print(
            f"pip-audit: the {args.service} vulnerability service cannot be reached "
            f"(0 of {len(deps)} pins audited: {skipped[0]['skip_reason']}); not failing the build"
        )
        return 0
    line = f"pip-audit: {len(audited)} of {len(deps)} pins audited, {len(vulnerable)} vulnerable"
    if skipped:
        line += f"; not audited: {', '.join(d['name'] for d in skipped)}"
    print(line)
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
