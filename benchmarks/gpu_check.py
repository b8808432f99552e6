"""GPU check: train and sort on CUDA, backends checked against fp32 there.

Run on a machine with an NVIDIA GPU (`python benchmarks/gpu_check.py`); exits 1 on a failed
check. Makes its own data (generated images, scikit-image's photos); needs no ../shared.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitrina
from vitrina.data import eval_transform
from vitrina.engine import Engine
from vitrina.training import TrainConfig, train_classifier

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_data(root: Path, n: int, size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.array(rgb) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


def check(ok: bool, what: str, failures: list[str]) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU here")
        return 1
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "data", 40)

        def train_and_check(label: str, **options) -> Path:
            t = time.perf_counter()
            res = train_classifier(
                TrainConfig(data_dir=str(data), device="cuda", out=str(tmp / label), **options),
                progress=False,
            )
            acc = res.metrics["val_accuracy"]
            check(
                acc >= 0.9,
                f"{label} on cuda: val acc {acc:.3f} ({time.perf_counter() - t:.1f} s)",
                failures,
            )
            return res.run_dir

        for precision in ("fp32", "bf16"):
            train_and_check(
                f"tutorial_cnn-scratch-{precision}",
                arch="tutorial_cnn",
                mode="scratch",
                epochs=8,
                lr=3e-3,
                precision=precision,
            )
        # a handful of finetune steps only re-estimates BatchNorm statistics: give it six epochs
        eff_run = train_and_check(
            "efficientnet_lite0-finetune-bf16",
            arch="efficientnet_lite0",
            mode="finetune",
            epochs=6,
            lr=1e-3,
            precision="bf16",
        )

        # ImageNet model: eager fp32 vs bf16 on the GPU, on real photos
        from skimage import data as skd

        model = vitrina.create("efficientnet_lite0", weights="imagenet")
        tf = eval_transform(model.preprocess)
        x = torch.stack([tf(Image.fromarray(skd.chelsea())), tf(Image.fromarray(skd.coffee()))])
        eager = Engine(model, backend="eager", device="cuda").run_tensor(x)
        bf16 = Engine(model, backend="bf16", device="cuda").run_tensor(x)
        top = eager.argmax(1).tolist()
        check(
            281 <= top[0] <= 285 and top[1] == 967,
            f"cuda eager top-1 {top} (cat, espresso)",
            failures,
        )
        check(bf16.argmax(1).tolist() == top, "cuda bf16 top-1 equals fp32", failures)
        diff = float((eager.softmax(1) - bf16.softmax(1)).abs().max())
        check(
            diff < 0.05,
            f"cuda bf16 probabilities within 0.05 of fp32 (max diff {diff:.4f})",
            failures,
        )

        # end-to-end sort on the GPU
        photos = tmp / "photos"
        photos.mkdir()
        for p in sorted(data.rglob("*.jpg")):
            (photos / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
        for backend in ("eager", "bf16"):
            t = time.perf_counter()
            s = vitrina.sort_folder(
                photos,
                eff_run,
                tmp / f"sorted-{backend}",
                backend=backend,
                device="cuda",
                batch_size=64,
            )
            dt = time.perf_counter() - t
            right = sum(1 for it in s.items if it.label == it.source.name.split("-")[0])
            check(
                right == len(s.items),
                f"sort on cuda [{backend}]: {right}/{len(s.items)} right, "
                f"{len(s.items) / dt:.0f} img/s end to end",
                failures,
            )
    print("all GPU checks passed" if not failures else f"{len(failures)} GPU checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
