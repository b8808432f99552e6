"""Shared test data: small generated images, never downloaded, never ../shared/data."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("VITRINA_OFFLINE", "1")
# ONNX exports of test models go to a throwaway folder, one per process: xdist workers
# inherit the controller's environment, and a folder they shared let one worker see another's
# half-written export (test_ir_is_converted_once_and_reused failed so). A VITRINA_CACHE the
# user set is kept, and so is the folder of a process a test started (a service worker, a
# torchrun worker or a decode process that imports a test module imports this file too, and
# would leave an empty folder behind: pytest sets PYTEST_CURRENT_TEST while a test runs).
_SPAWNED = "PYTEST_CURRENT_TEST" in os.environ or multiprocessing.parent_process() is not None
_OWN_CACHE: str | None = None
if not _SPAWNED and os.environ.get("VITRINA_CACHE") in (None, os.environ.get("VITRINA_TEST_CACHE")):
    _OWN_CACHE = tempfile.mkdtemp(prefix="vitrina-test-cache-")
    os.environ["VITRINA_CACHE"] = os.environ["VITRINA_TEST_CACHE"] = _OWN_CACHE


def pytest_unconfigure(config) -> None:
    """Remove this process's test cache: a run leaves no gigabytes of exports in /tmp (here,
    not in atexit, which xdist workers never run)."""
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Two pytest-xdist workers share two cores: one torch thread each avoids OpenMP spinning.
torch.set_num_threads(1)

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_image(path: Path, rgb: tuple[int, int, int], *, size: int = 40, seed: int = 0) -> Path:
    """A coloured square with noise, so every file differs."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def make_dataset(root: Path, per_class: int = 12, classes: dict | None = None) -> Path:
    for ci, (name, rgb) in enumerate((classes or COLORS).items()):
        for i in range(per_class):
            ext = ".png" if i % 2 else ".jpg"
            make_image(root / name / f"{name}-{i:02d}{ext}", rgb, seed=ci * 1000 + i)
    return root


def toy_config(data: Path, out: Path, **overrides):
    """A fast, deterministic training config for the tiny tutorial CNN."""
    from vitrina.training import TrainConfig

    base = dict(
        data_dir=str(data),
        arch="tutorial_cnn",
        mode="scratch",
        epochs=2,
        batch_size=8,
        lr=3e-3,
        augment="none",
        out=str(out),
        num_workers=0,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained from scratch on three colours (a real run folder)."""
    from vitrina.training import train_classifier

    root = tmp_path_factory.mktemp("toyrun")
    data = make_dataset(root / "data", per_class=10)
    cfg = toy_config(data, root / "run", epochs=12)
    return train_classifier(cfg, progress=False).run_dir


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Unsorted photos: two of each colour, plus a corrupt one and a text file."""
    d = tmp_path / "photos"
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(2):
            make_image(d / f"{name}-new-{i}.png", rgb, seed=5000 + ci * 10 + i)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not a photo")
    return d


def make_bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8  # after the PNG signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``vitrina ARGS...`` in-process: (exit code, stdout, stderr)."""
    from vitrina.cli import main

    code = main([str(a) for a in args])
    o, e = capsys.readouterr()
    return code, o, e


def usage_error(err: str, *needles: str) -> None:
    """A usage error (exit 2) as typer prints it: a box on stderr, no traceback. The box wraps
    long lines, so the needles are looked for in the text with the box and line breaks gone."""
    assert "Traceback" not in err
    flat = " ".join(err.replace("│", " ").split())
    for n in needles:
        assert n in flat, flat


def one_line_error(err: str, *needles: str) -> None:
    """The CLI's promise for bad input: one line, no traceback, naming what is wrong."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def killed_after_delete(fn, *, after: int = 1) -> int:
    """Run ``fn()`` in a forked child that is SIGKILLed right after its ``after``-th deleted
    source (between "source deleted" and "manifest row written": the worst moment of a move).
    Returns the child's exit signal (9) once it is dead."""
    import multiprocessing as mp
    import signal

    def child() -> None:
        import vitrina.io.files as files

        real = files._delete_source
        count = {"n": 0}

        def delete_then_die(*args, **kwargs):
            real(*args, **kwargs)
            count["n"] += 1
            if count["n"] == after:
                os.kill(os.getpid(), signal.SIGKILL)

        files._delete_source = delete_then_die
        fn()

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(120)
    return -proc.exitcode if proc.exitcode is not None else 0
