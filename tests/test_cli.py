from __future__ import annotations

import json
from pathlib import Path

from conftest import make_bomb_png, one_line_error
from conftest import run_cli as run


def test_help_teaches(capsys) -> None:
    code, o, _ = run(capsys, "--help")
    assert code == 0
    for cmd in ("train", "sort", "predict", "evaluate", "demo", "data"):
        assert cmd in o
    code, o, _ = run(capsys, "sort", "--help")
    assert code == 0 and "--min-confidence" in o and "manifest.csv" in o


def test_missing_folder_is_one_line_and_exit_1(capsys, tmp_path: Path) -> None:
    code, _, e = run(
        capsys, "train", tmp_path / "nope", "--arch", "tutorial_cnn", "--mode", "scratch"
    )
    assert code == 1
    one_line_error(e, "nope", "folder not found")


def test_unknown_arch_suggests(capsys, toy_data: Path, tmp_path: Path) -> None:
    code, _, e = run(
        capsys,
        "train",
        toy_data,
        "--arch",
        "resnet1O",
        "--mode",
        "scratch",
        "--out",
        tmp_path / "r",
    )
    assert code == 1
    one_line_error(e, "resnet1O", "did you mean")


def test_empty_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, e = run(capsys, "data", "inspect", tmp_path / "empty")
    assert code == 1
    one_line_error(e, "empty", "no images")


def test_usage_error_is_exit_2(capsys) -> None:
    code, _, _ = run(capsys, "sort")
    assert code == 2


def test_predict_evaluate_sort_json(
    capsys, toy_run: Path, toy_data: Path, photos: Path, tmp_path: Path
) -> None:
    code, o, _ = run(
        capsys, "predict", toy_run, photos / "red-new-0.png", "--json", "--backend", "eager"
    )
    assert code == 0
    assert json.loads(o)[0]["label"] == "red"

    code, o, e = run(capsys, "predict", toy_run, photos / "broken.jpg")
    assert code == 1 and "broken.jpg" in e and "Traceback" not in e

    code, o, _ = run(capsys, "evaluate", toy_run, toy_data, "--json", "--top-k", "2")
    rep = json.loads(o)
    assert code == 0 and rep["n"] == 36 and set(rep["per_class"]) == {"red", "green", "blue"}

    code, o, _ = run(capsys, "sort", photos, "--model", toy_run, "--out", tmp_path / "s", "--json")
    rows = json.loads(o)
    assert code == 0 and len(rows) == 7
    assert (tmp_path / "s" / "manifest.csv").exists()

    code, o, _ = run(capsys, "sort", photos, "--model", toy_run, "--out", tmp_path / "s2")
    assert code == 0 and "copied 7 photos" in o and "unreadable" in o


def test_sort_of_a_tree_without_recursive_says_where_the_photos_are(
    capsys, toy_run: Path, photos: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    for p in photos.glob("*.png"):
        (tree / p.stem.split("-")[0]).mkdir(parents=True, exist_ok=True)
        (tree / p.stem.split("-")[0] / p.name).write_bytes(p.read_bytes())
    out = tree / "sorted"  # inside the tree: its own output never counts
    code, o, e = run(capsys, "sort", tree, "--model", toy_run, "--out", out)
    assert code == 0 and "copied 0 photos" in o
    assert "6 lie in its sub-folders: add --recursive (-r)" in e.replace("\n", " ")
    code, o, e = run(capsys, "sort", tree, "--model", toy_run, "--out", out, "-r")
    assert code == 0 and "copied 6 photos" in o and "sub-folders" not in e


def test_tampered_run_is_one_line(capsys, toy_run: Path, photos: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(toy_run, run_dir)
    (run_dir / "model.safetensors").write_bytes(b"garbage")
    code, _, e = run(capsys, "sort", photos, "--model", run_dir, "--out", tmp_path / "o")
    assert code == 1
    one_line_error(e, "model.safetensors", "sha256")
    assert not (tmp_path / "o").exists()


def test_inspect_reports(capsys, toy_data: Path) -> None:
    (toy_data / "red" / "zero.png").write_bytes(b"")
    make_bomb_png(toy_data / "blue" / "huge.png")
    code, o, _ = run(capsys, "data", "inspect", toy_data, "--json")
    rep = json.loads(o)
    assert code == 0 and rep["total"] == 38
    reasons = " ".join(u["error"] for u in rep["unreadable"])
    assert "empty" in reasons and "too large" in reasons
    code, o, _ = run(capsys, "data", "inspect", toy_data)
    assert code == 0 and "unreadable: 2" in o


def test_missing_run_folder_is_named(capsys, photos: Path, tmp_path: Path) -> None:
    code, _, e = run(capsys, "predict", tmp_path / "runs" / "nothing", photos / "red-new-0.png")
    assert code == 1
    one_line_error(e, "nothing", "run folder not found")


def test_export_onnx_is_checked(capsys, toy_run: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    target = tmp_path / "toy.onnx"
    code, o, e = run(capsys, "export", toy_run, "--out", target, "--json")
    assert code == 0, e
    rep = json.loads(o)
    assert rep["top1_agreement"] == 1.0 and rep["max_abs_diff"] < 1e-3
    sess = ort.InferenceSession(str(target))
    for batch in (1, 5):  # dynamic batch size
        y = sess.run(None, {"x": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert y.shape == (batch, 3)
    code, _, e = run(capsys, "export", toy_run, "--out", target)
    assert code == 1 and "exists" in e  # never overwritten


def test_diverging_export_is_refused(capsys, toy_run: Path, tmp_path: Path, monkeypatch) -> None:
    import vitrina.engine.onnx as onnx_mod

    real = onnx_mod.compare_onnx
    monkeypatch.setattr(
        onnx_mod,
        "compare_onnx",
        lambda *a, **k: {**real(*a, **k), "max_abs_diff": 0.5},  # as a broken exporter would
    )
    target = tmp_path / "bad.onnx"
    code, _, e = run(capsys, "export", toy_run, "--out", target)
    assert code == 1
    one_line_error(e, "diverges", "max |diff| 0.5")
    assert not target.exists() and not list(tmp_path.glob(".vitrina-tmp-*"))


def test_progress_off_a_terminal_is_a_line_every_few_seconds(capsys) -> None:
    """Issue 13: `sort --dry-run` over 50,000 photos showed nothing in a log for minutes."""
    from vitrina.cli._common import progress_bar

    with progress_bar("sorting", None) as update:  # stderr is captured: not a terminal
        update.every = 0.0  # type: ignore[attr-defined]  (5 s in real use)
        for done in range(1, 4):
            update(done, 3)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("sorting: 1 of 3 (33%)")
    assert lines[-1].startswith("sorting: 3 of 3 (100%)") and "done in" in lines[-1]
    with progress_bar("sorting", 3) as update:
        update(1)  # a short job logs nothing at all
    assert capsys.readouterr().err == ""


def test_predict_takes_a_folder_and_names_a_fifo(capsys, toy_run: Path, photos: Path) -> None:
    """Issue 13 #14: a folder given to predict was "unreadable ... is a directory"."""
    import os

    code, o, e = run(capsys, "predict", toy_run, photos)
    assert code == 1  # broken.jpg is in there: exit 1, but every other photo is answered
    assert "is a directory" not in e and "broken.jpg: truncated or corrupt" in e
    assert sum(1 for line in o.splitlines() if ".png:" in line) == 6
    os.mkfifo(photos / "pipe.jpg")
    code, _, e = run(capsys, "predict", toy_run, photos / "pipe.jpg")
    assert code == 1
    one_line_error(e, "pipe.jpg: is a FIFO (named pipe), not an image file")
