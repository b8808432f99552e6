"""tools/audit_constraints.py: a vulnerable pin fails the build; an unreachable service does not."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "audit_constraints.py"


@pytest.fixture
def audit():
    spec = importlib.util.spec_from_file_location("audit_constraints", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(stdout: str, stderr: str = "", rc: int = 0):
    def run(cmd, **kwargs):
        assert "--no-deps" in cmd and "constraints.txt" in cmd
        return subprocess.CompletedProcess(cmd, rc, stdout, stderr)

    return run


def test_vulnerable_pin_fails(audit, monkeypatch, capsys):
    report = {
        "dependencies": [
            {
                "name": "requests",
                "version": "2.19.0",
                "vulns": [{"id": "PYSEC-1", "fix_versions": ["2.20.0"]}],
            },
            {"name": "numpy", "version": "2.4.6", "vulns": []},
        ]
    }
    monkeypatch.setattr(audit.subprocess, "run", _fake_run(json.dumps(report), rc=1))
    assert audit.main(["constraints.txt"]) == 1
    out = capsys.readouterr().out
    assert "requests==2.19.0: PYSEC-1 (fixed in: 2.20.0)" in out
    assert "2 of 2 pins audited, 1 vulnerable" in out


def test_clean_pins_pass(audit, monkeypatch, capsys):
    report = {"dependencies": [{"name": "numpy", "version": "2.4.6", "vulns": []}]}
    monkeypatch.setattr(audit.subprocess, "run", _fake_run(json.dumps(report)))
    assert audit.main(["constraints.txt"]) == 0
    assert "1 of 1 pins audited, 0 vulnerable" in capsys.readouterr().out


def test_nothing_audited_is_said_not_hidden(audit, monkeypatch, capsys):
    # pip-audit itself prints "No known vulnerabilities found" when every lookup was skipped.
    report = {"dependencies": [{"name": "torch", "skip_reason": "Dependency not found on PyPI"}]}
    monkeypatch.setattr(audit.subprocess, "run", _fake_run(json.dumps(report)))
    assert audit.main(["constraints.txt"]) == 0
    out = capsys.readouterr().out
    assert "cannot be reached (0 of 1 pins audited" in out and out.count("\n") == 1


def test_offline_is_one_line_and_passes(audit, monkeypatch, capsys):
    err = "Traceback ...\nrequests.exceptions.ConnectionError: Max retries exceeded"
    monkeypatch.setattr(audit.subprocess, "run", _fake_run("", err, rc=1))
    assert audit.main(["constraints.txt", "--service", "osv"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "NOT audited" in out


def test_other_failures_fail(audit, monkeypatch, capsys):
    monkeypatch.setattr(audit.subprocess, "run", _fake_run("", "ERROR: no such file", rc=2))
    assert audit.main(["constraints.txt"]) == 1
