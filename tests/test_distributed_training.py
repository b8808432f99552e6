"""Training on several processes (``--nproc N`` / torchrun): real processes on this machine.

Why a run on 2 processes can give the single-process weights: the classifier's
``--batch-size`` is the global batch, every epoch's permutation is the single-process one
dealt to the ranks (so the ranks' k-th batches together are the single-process k-th batch),
the cross-entropy is a mean over images, and DDP averages the ranks' gradients. The model
here (``tutorial_cnn``) has no BatchNorm and no dropout (per-rank batch statistics would
differ), the data is decoded once (``--augment none``) and the training set divides by the
batch, so the only difference left is the order of float sums.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset, toy_config
from vitrina.errors import VitrinaError
from vitrina.training import train_classifier
from vitrina.training.distributed import Dist, RankBatches, RankSampler, shard_loader, strip_nproc

SRC = Path(__file__).resolve().parents[1] / "src"


def _vitrina(*args: object) -> list[str]:
    return [sys.executable, "-m", "vitrina", *map(str, args)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _train_args(data: Path, out: Path, epochs: int) -> list[object]:
    c = toy_config(data, out, epochs=epochs)
    return [
        "train", data, "--arch", c.arch, "--mode", c.mode, "--epochs", epochs,
        "--batch-size", c.batch_size, "--lr", c.lr, "--augment", c.augment, "--out", out,
        "--workers", 0, "--device", "cpu", "--patience", 0,
    ]  # fmt: skip


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# -- the samplers, without processes ------------------------------------------------------


def test_rank_sampler_deals_the_single_process_batches() -> None:
    """Per-rank batches of B/N: the ranks' k-th batches together are the single-process k-th
    batch of B (same generator state), every rank takes as many steps."""
    n, batch, world = 22, 8, 2
    single = torch.utils.data.DataLoader(
        list(range(n)), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    expected = [sorted(b.tolist()) for b in single]
    ranks = []
    for rank in range(world):
        loader = shard_loader(
            torch.utils.data.DataLoader(
                list(range(n)),
                batch_size=batch,
                shuffle=True,
                generator=torch.Generator().manual_seed(7),
            ),
            Dist(rank, world),
        )
        ranks.append([b.tolist() for b in loader])
    assert len(ranks[0]) == len(ranks[1]) == len(expected)
    for k, want in enumerate(expected[:-1]):  # the last batch is padded to equal shares
        assert sorted(ranks[0][k] + ranks[1][k]) == want
    last = ranks[0][-1] + ranks[1][-1]
    assert set(expected[-1]) <= set(last) and len(last) == len(expected[-1]) + (-n % world)


def test_rank_sampler_without_shuffle_and_uneven_batch() -> None:
    s = [list(RankSampler(5, r, 2, shuffle=False)) for r in range(2)]
    assert s == [[0, 2, 4], [1, 3, 0]]
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=5)
    with pytest.raises(VitrinaError, match="--batch-size 5 is the global batch"):
        shard_loader(loader, Dist(0, 2))


def test_rank_batches_deal_whole_pk_batches() -> None:
    from vitrina.data.samplers import PKSampler

    labels = [i // 4 for i in range(40)]  # 10 identities x 4
    pk = PKSampler(labels, p=2, k=2, seed=3).set_epoch(1)
    epoch = list(pk)  # 10 batches
    dealt = [list(RankBatches(pk, r, 3)) for r in range(3)]
    assert [len(d) for d in dealt] == [3, 3, 3]  # equal steps: the 10th batch waits
    assert [b for trio in zip(*dealt, strict=True) for b in trio] == epoch[:9]
    for d in dealt:  # each rank's batch is a whole P x K batch
        assert all(len({labels[i] for i in b}) == 2 and len(b) == 4 for b in d)
    short = [list(RankBatches(PKSampler(labels[:8], p=2, k=2), r, 4)) for r in range(4)]
    assert all(len(s) == 1 for s in short)  # 2 batches, 4 ranks: repeats, nobody idles


def test_strip_nproc() -> None:
    assert strip_nproc(["train", "d", "--nproc", "2", "--out", "o"]) == ["train", "d", "--out", "o"]
    assert strip_nproc(["train", "--nproc=4", "d"]) == ["train", "d"]


# -- real processes -------------------------------------------------------------------------


def test_two_processes_train_the_single_process_weights(tmp_path: Path) -> None:
    """`vitrina train --nproc 2` (gloo, 2 CPU processes, global batch 8 = 2 x 4) ends with
    the weights of one process with batch 8; rank 0 alone wrote the run folder."""
    data = make_dataset(tmp_path / "data", per_class=10)  # 24 training images: 3 batches
    one = train_classifier(toy_config(data, tmp_path / "one", epochs=3, patience=0), progress=False)
    two = tmp_path / "two"
    proc = subprocess.run(
        _vitrina(*_train_args(data, two, 3), "--nproc", 2),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best epoch") == 1  # rank 0 reports, once
    assert _max_diff(one.run_dir, two) < 1e-5
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # one writer
    import json

    for mine, theirs in zip(one.history, map(json.loads, lines), strict=True):
        # the figures are the world's (both ranks' images), not rank 0's half
        assert theirs["train_loss"] == pytest.approx(mine["train_loss"], rel=1e-4)
        assert theirs["train_accuracy"] == pytest.approx(mine["train_accuracy"])
        assert theirs["val_accuracy"] == pytest.approx(mine["val_accuracy"])


def _ranked_children(parent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes that ``parent`` (the launcher) started."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for var in env:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = int(entry.name)
    return found


def _epoch_done(out: Path) -> int:
    try:
        import json

        return int(json.loads((out / "checkpoint" / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_rank_then_resume_finishes_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    """Kill rank 1 mid-run: the launcher stops with one line saying how to go on; the same
    command with --resume (every rank loads rank 0's resume point) finishes, with the weights
    of an uninterrupted single-process run."""
    epochs = 40
    data = make_dataset(tmp_path / "data", per_class=10)
    one = train_classifier(
        toy_config(data, tmp_path / "one", epochs=epochs, patience=0), progress=False
    )
    out = tmp_path / "two"
    args = _train_args(data, out, epochs)
    launcher = subprocess.Popen(
        _vitrina(*args, "--nproc", 2),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _epoch_done(out) < 2 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ranks = _ranked_children(launcher.pid)
        assert launcher.poll() is None and 1 in ranks, "the run ended before the kill"
        os.kill(ranks[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert "process 1 of 2 stopped" in err and "--resume" in err
    assert 2 <= _epoch_done(out) < epochs
    proc = subprocess.run(
        _vitrina(*args, "--resume", "--nproc", 2),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _epoch_done(out) == epochs
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= epochs
    assert _max_diff(one.run_dir, out) < 1e-4


@pytest.mark.slow
def test_two_processes_train_an_embedding(tmp_path: Path) -> None:
    """`vitrina train-embedding --nproc 2`: whole P×K batches per rank, a loss with its own
    weights (ArcFace) synced by DDP; rank 0 writes a run folder the embedding tools load."""
    from test_train_embedding import make_identities
    from vitrina.runs import load_model, read_run

    data = make_identities(tmp_path / "ids")
    out = tmp_path / "emb"
    proc = subprocess.run(
        _vitrina(
            "train-embedding",
            data,
            "--arch",
            "tutorial_cnn",
            "--weights",
            "none",
            "--loss",
            "arcface+triplet",
            "--dim",
            32,
            "--p",
            3,
            "--k",
            3,
            "--epochs",
            2,
            "--lr",
            3e-3,
            "--val-fraction",
            0.34,
            "--augment",
            "none",
            "--out",
            out,
            "--workers",
            0,
            "--device",
            "cpu",
            "--nproc",
            2,
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1
    info = read_run(out)
    assert info.metrics["epochs_run"] == 2 and "val_mAP" in info.metrics
    assert load_model(out).embedding_config()["dim"] == 32


def test_nproc_inside_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from vitrina.training.distributed import launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VitrinaError, match="torchrun already started"):
        launch(["train", "x"], 2)


def test_lbfgs_is_refused_on_several_processes() -> None:
    from vitrina.training.distributed import check_optimizer

    w = torch.nn.Parameter(torch.zeros(2))
    check_optimizer(torch.optim.LBFGS([w]), Dist())  # one process: fine
    check_optimizer(torch.optim.AdamW([w]), Dist(1, 2))
    with pytest.raises(VitrinaError, match=r"lbfgs is full-batch.*--optimizer adamw"):
        check_optimizer(torch.optim.LBFGS([w]), Dist(0, 2))
