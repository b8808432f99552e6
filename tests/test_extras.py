"""``pip install vitrina`` is the light core; faces, explanations, the service and the rest are
extras. These tests run the command line in a subprocess where every optional library is
missing (``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed)
and check that the core works and that each extra-only command says, in one line, what to
install. The wheel's own check in a fresh virtualenv is ``make wheel-check``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import make_dataset, make_image
from vitrina.errors import MissingExtraError, VitrinaError, require

ROOT = Path(__file__).resolve().parents[1]

#: The top-level modules of every optional dependency (the extras of pyproject.toml).
OPTIONAL_MODULES = (
    "dlib",
    "face_recognition_models",
    "cv2",
    "pytorch_grad_cam",
    "captum",
    "fastapi",
    "starlette",
    "uvicorn",
    "multipart",
    "python_multipart",
    "prometheus_client",
    "umap",
    "pynndescent",
    "numba",
    "pyarrow",
    "pycocotools",
    "openvino",
    "nncf",
    "ray",
    "pandas",
)

_RUNNER = textwrap.dedent(
    """
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` now fails as if it were not installed
    from vitrina.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        code = main(argv)
        sys.stdout.flush(); sys.stderr.flush()
        print("\\n@@exit", code, flush=True)
        print("\\n@@exit", code, file=sys.stderr, flush=True)
    """
)


def run_without_extras(*commands: list[str]) -> list[tuple[int, str, str]]:
    """Run each ``vitrina`` command line in one subprocess that has none of the optional
    libraries: ``[(exit code, stdout, stderr), ...]``."""
    script = _RUNNER.format(blocked=OPTIONAL_MODULES)
    argv = json.dumps([[str(a) for a in c] for c in commands])
    p = subprocess.run(
        [sys.executable, "-c", script, argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**__import__("os").environ, "COLUMNS": "200", "VITRINA_OFFLINE": "1"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    outs = re.split(r"\n@@exit (-?\d+)\n", p.stdout)
    errs = re.split(r"\n@@exit (-?\d+)\n", p.stderr)
    codes = [int(c) for c in outs[1::2]]
    assert len(codes) == len(commands), p.stdout[-2000:] + p.stderr[-2000:]
    return list(zip(codes, outs[0::2], errs[0::2], strict=False))


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingExtraError) as info:
        require("dlib", "faces", "face recognition")
    e = info.value
    assert isinstance(e, VitrinaError) and isinstance(e, ImportError)  # the CLI prints it
    assert str(e) == (
        "face recognition needs dlib, which is not installed: pip install 'vitrina[faces]'"
    )
    assert (e.module, e.extra) == ("dlib", "faces")
    assert require("json", "faces") is __import__("json")
    import pickle

    back = pickle.loads(pickle.dumps(e))  # from a decode worker to the parent process
    assert type(back) is MissingExtraError and str(back) == str(e)


@pytest.mark.slow  # trains, sorts, evaluates and embeds in a fresh process (66 s on a loaded runner)
def test_core_commands_work_without_any_extra(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_class=6)
    new = [make_image(tmp_path / "new" / f"{i}.png", (200, 30, 30), seed=i) for i in range(4)]
    run, sorted_ = tmp_path / "run", tmp_path / "sorted"
    results = run_without_extras(
        ["--help"],
        ["--version"],
        [
            *("train", data, "--arch", "tutorial_cnn", "--mode", "scratch", "--epochs", "1"),
            *("--batch-size", "8", "--augment", "none", "--out", run, "--device", "cpu"),
        ],
        ["sort", new[0].parent, "--model", run, "--out", sorted_, "--json", "--backend", "eager"],
        ["evaluate", run, data, "--json"],
        ["embed", run, data, "--out", tmp_path / "v.npy", "--backend", "eager", "-r"],
    )
    (help_code, help_out, _), (vcode, vout, _), *work = results
    assert help_code == 0
    for panel in ("Classify photos", "Embed and search", "Faces (extra: faces)"):
        assert panel in help_out
    assert vcode == 0 and vout.strip().startswith("vitrina ")
    for code, _, err in work:
        assert code == 0, err
    assert len(json.loads(work[1][1])) == len(new)  # every photo sorted
    assert json.loads(work[2][1])["n"] == 18
    assert (tmp_path / "v.npy").is_file()


def test_extra_commands_say_what_to_install(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_class=3)
    photo = next((data / "red").iterdir())
    cases = {
        "faces": ["faces", "enroll", tmp_path / "gallery", "alice", photo],
        "explain": ["explain", "tutorial_cnn", photo, "--method", "gradcam"],
        "serve": ["serve", "--model", "tutorial_cnn"],
        "parquet": ["embed", "efficientnet_lite0", photo, "--out", tmp_path / "v.parquet"],
        "umap": [
            *("plot-embeddings", data, "--model", "efficientnet_lite0"),
            *("--method", "umap", "--out", tmp_path / "map.png"),
        ],
        "detect": ["detect", "predict", "hog_people", photo],
    }
    results = run_without_extras(*cases.values())
    for extra, (code, _, err) in zip(cases, results, strict=True):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 1, (extra, err)
        assert len(lines) == 1 and "Traceback" not in err, (extra, err)
        assert f"pip install 'vitrina[{extra}]'" in lines[0], (extra, lines[0])
    assert not (tmp_path / "gallery").exists() or not any((tmp_path / "gallery").iterdir())


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_dependency_is_a_lower_bound_pinned_in_constraints() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req.specifier
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    for text in [*project["dependencies"], *(r for reqs in extras.values() for r in reqs)]:
        req = Requirement(text)
        if req.name == "vitrina":
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{name}: in pyproject.toml but not pinned in constraints.txt"
        assert all(s.operator in (">=", "<", "!=") for s in req.specifier), text  # no pins here
        pinned = next(iter(pins[name])).version
        assert req.specifier.contains(pinned), f"{text}: excludes the pinned {pinned}"


def test_all_installs_every_extra() -> None:
    from packaging.requirements import Requirement

    extras = _pyproject()["project"]["optional-dependencies"]
    (all_req,) = extras["all"]
    assert Requirement(all_req).extras == set(extras) - {"all", "dev", "docs"}


def test_every_command_has_a_workflow_panel() -> None:
    """`vitrina --help` groups commands by workflow: a new command gets a panel in PANELS."""
    from vitrina.cli import PANELS, _register, app

    _register()
    named = {name for names in PANELS.values() for name in names}
    for info in [*app.registered_commands, *app.registered_groups]:
        assert info.rich_help_panel in PANELS, (info.name, info.rich_help_panel)
    registered = {i.name for i in app.registered_groups} | {
        i.name or i.callback.__name__.replace("_", "-") for i in app.registered_commands
    }
    assert registered == named
