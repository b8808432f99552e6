"""The engine's task contract: items of every kind, tasks, results mapped back, and how a
detector plugs in (a test-only detection task: letterbox recorded, variable-length outputs,
boxes mapped back to the photo, regions of a photo as items)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import COLORS, make_image
from vitrina.engine import (
    BOXES,
    TOLERANCES,
    Embedding,
    Engine,
    Letterbox,
    Logits,
    Placement,
    Region,
    Task,
    compare_outputs,
    load_item,
)
from vitrina.errors import ImageReadError
from vitrina.models import Preprocess
from vitrina.runs import load_model

# ---------------------------------------------------------------------------- items


@pytest.fixture(scope="module")
def classifier(toy_run: Path):
    return load_model(toy_run)


def test_items_of_every_kind_give_the_same_answer(classifier, tmp_path: Path) -> None:
    path = make_image(tmp_path / "red.png", COLORS["red"], size=48, seed=1)
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)
    chw = torch.from_numpy(arr).permute(2, 0, 1)  # torchvision's layout, uint8
    floats = arr.astype(np.float32) / 255.0
    eng = Engine(classifier, backend="eager", num_workers=0)
    results = list(eng.run(Logits(top_k=2), [path, str(path), pil, arr, chw, floats]))
    assert all(r.ok for r in results)
    ref = results[0].value.probabilities
    for r in results[1:]:
        np.testing.assert_allclose(r.value.probabilities, ref, atol=1e-6)
    assert [r.index for r in results] == list(range(6))
    assert classifier.class_names[results[0].value.best[0]] == "red"


def test_bad_items_are_errors_next_to_results(classifier, tmp_path: Path) -> None:
    good = make_image(tmp_path / "g.png", COLORS["green"], seed=2)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    items = [
        good,
        broken,
        tmp_path / "missing.png",
        np.zeros((3, 0, 3)),  # an array that is not an image
        Region(good, (500, 500, 600, 600)),  # outside the photo
        Region(good, (10, 10, 10, 30)),  # no area
        "not-a-file.png",
    ]
    results = list(Engine(classifier, backend="eager", num_workers=0).run(Logits(), items))
    assert [r.ok for r in results] == [True] + [False] * 6
    assert "broken.jpg: not an image" in results[1].error
    assert "missing.png: file not found" in results[2].error
    assert "got shape (3, 0, 3)" in results[3].error
    assert "region lies outside the photo (40x40 pixels)" in results[4].error
    assert str(good) in results[4].error
    assert "empty region" in results[5].error
    assert results[1].reason == "not an image (unrecognised format)"
    for r in results[1:]:
        assert "\n" not in r.error


def test_regions_are_cut_from_the_photo_and_clipped(tmp_path: Path) -> None:
    a = np.zeros((60, 80, 3), np.uint8)
    a[10:30, 20:50] = (255, 0, 0)
    path = tmp_path / "p.png"
    Image.fromarray(a).save(path)
    crop = load_item(Region(path, (20, 10, 50, 30)))
    assert crop.size == (30, 20) and np.asarray(crop)[..., 0].min() == 255
    edge = load_item(Region(a, (70, 50, 95, 75)))  # past the corner: clipped to 10x10
    assert edge.size == (10, 10)
    with pytest.raises(ImageReadError, match="outside the photo"):
        load_item(Region(path, (-50, -50, -1, -1)))
    with pytest.raises(TypeError, match="4 numbers"):
        Region(path, (1, 2, 3))


def test_workers_and_inline_and_prepared_agree(classifier, tmp_path: Path) -> None:
    paths = [
        make_image(tmp_path / f"{c}{i}.png", rgb, seed=i)
        for i in range(8)
        for c, rgb in COLORS.items()
    ]
    task = Embedding()
    inline = Engine(classifier, backend="eager", batch_size=4, num_workers=0)
    workers = Engine(classifier, backend="eager", batch_size=4, num_workers=2)
    a = np.stack([r.value for r in inline.run(task, paths)])
    b = np.stack([r.value for r in workers.run(task, paths)])
    c = np.stack(inline.run_prepared(task, [inline.prepare(task, p) for p in paths]))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    raw = np.stack([r.value for r in inline.run(Embedding(normalize=False), paths)])
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), a, atol=1e-5)


def test_progress_counts_every_item_once(classifier, photos: Path) -> None:
    paths = sorted(photos.iterdir())
    seen: list[int] = []
    eng = Engine(classifier, backend="eager", batch_size=3, num_workers=0)
    results = list(eng.run(Logits(), paths, on_progress=seen.append))
    assert sum(seen) == len(paths) == len(results)


def test_the_engine_before_tasks_still_works_with_a_warning(classifier, photos: Path) -> None:
    paths = sorted(p for p in photos.iterdir() if p.suffix == ".png")
    eng = Engine(classifier, backend="eager", num_workers=0)
    with pytest.warns(DeprecationWarning, match="run a task"):
        batches = list(eng.run(paths, output="logits"))
    logits = torch.cat([b.outputs for b in batches])
    probs = np.stack([r.value.probabilities for r in eng.run(Logits(), paths)])
    np.testing.assert_allclose(logits.softmax(1).numpy(), probs, atol=1e-6)
    with pytest.warns(DeprecationWarning, match="run_tensor"):
        eng.run_tensor(torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------------------- a detector


class GridDetector(nn.Module):
    """A test detector: every 8x8 cell of the input whose mean brightness passes 0.2 (in
    normalised units) is a box, labelled by its strongest colour channel. Variable-length
    output, plain torch ops, deterministic."""

    cell = 8

    def __init__(self) -> None:
        super().__init__()
        self.arch = "grid_detector"
        self.preprocess = Preprocess(
            input_size=(64, 96), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0
        )
        self.pool = nn.AvgPool2d(self.cell)
        self.scale = nn.Conv2d(3, 3, 1, bias=False)  # identity: something for backends to run
        with torch.no_grad():
            self.scale.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def boxes(self, x: torch.Tensor) -> list[torch.Tensor]:
        cells = self.pool(self.scale(x))  # (B, 3, h, w), mean colour per cell
        out = []
        for c in cells:
            score, label = c.max(dim=0)
            ys, xs = torch.nonzero(score > 0.2, as_tuple=True)
            s = self.cell
            rows = torch.stack(
                [xs * s, ys * s, (xs + 1) * s, (ys + 1) * s, score[ys, xs], label[ys, xs]], dim=1
            )
            out.append(rows.float())
        return out

    def onnx_single_image(self, output: str) -> nn.Module:
        """One image's boxes as one graph (how the onnx backend exports variable-length
        outputs; the real detectors do the same)."""

        class One(nn.Module):
            def __init__(self, grid: GridDetector) -> None:
                super().__init__()
                self.grid = grid

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.grid.boxes(x)[0]

        return One(self)


@dataclass(frozen=True)
class GridBoxes(Task):
    """Test-only detection task: letterbox with the placement recorded; boxes mapped back to
    the photo's own pixels; cells of one colour merged into one box per label."""

    name: ClassVar[str] = "grid-boxes"
    output: ClassVar[str] = BOXES

    def decode_side(self, pre: Any) -> int | None:
        return None

    def preparer(self, pre: Any) -> Letterbox:
        return Letterbox(pre, fill=0)

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        results = []
        for boxes, placement in zip(outputs, metas, strict=True):
            photo = placement.to_photo(boxes.numpy())
            merged = {}
            for label in sorted(set(photo[:, 5].astype(int).tolist())):
                b = photo[photo[:, 5] == label]
                merged[label] = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
            results.append(merged)
        return results


def _shelf(path: Path, size: tuple[int, int], squares: list[tuple[int, int, int, str]]) -> Path:
    """A black photo with coloured squares (left, top, side, colour)."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    for left, top, side, colour in squares:
        a[top : top + side, left : left + side] = COLORS[colour]
    Image.fromarray(a).save(path)
    return path


def test_a_detector_plugs_in_as_a_task(tmp_path: Path, classifier) -> None:
    # Photos of other shapes than the input (wide, tall), with 0, 1 and 3 objects.
    wide = _shelf(tmp_path / "wide.png", (300, 100), [(30, 20, 60, "red"), (200, 30, 50, "blue")])
    tall = _shelf(tmp_path / "tall.png", (90, 270), [(10, 100, 70, "green")])
    empty = _shelf(tmp_path / "empty.png", (120, 120), [])
    det = GridDetector()
    eng = Engine(det, backend="eager", num_workers=0)
    results = [r.value for r in eng.run(GridBoxes(), [wide, tall, empty])]
    assert results[2] == {}
    assert set(results[0]) == {0, 2} and set(results[1]) == {1}
    # Mapped back to the photo's own pixels: within one input cell (8 px / scale) of truth.
    tol = 8 / (96 / 300) + 1
    for got, want in ((results[0][0], (30, 20, 90, 80)), (results[0][2], (200, 30, 250, 80))):
        assert np.allclose(got, want, atol=tol), (got, want)
    assert np.allclose(results[1][1], (10, 100, 80, 170), atol=8 / (64 / 270) + 1)

    # Regions of the photo as items: crop each box, classify it with another model.
    regions = [
        Region(wide, results[0][0]),
        Region(wide, results[0][2]),
        Region(tall, results[1][1]),
    ]
    names = classifier.class_names
    labels = [
        names[r.value.best[0]]
        for r in Engine(classifier, backend="eager", num_workers=0).run(Logits(), regions)
    ]
    assert labels == ["red", "blue", "green"]


def test_placement_round_trips_and_letterbox_keeps_the_ratio() -> None:
    pre = Preprocess(input_size=(64, 96), crop_pct=1.0)
    lb = Letterbox(pre)
    place = lb.place((300, 100))
    assert place.scale[0] == pytest.approx(place.scale[1], rel=0.02)  # ratio kept
    boxes = np.array([[0, 0, 300, 100], [120, 40, 180, 60]], np.float32)
    np.testing.assert_allclose(place.to_photo(place.to_input(boxes)), boxes, atol=1e-4)
    prepared = lb(Image.new("RGB", (300, 100), (200, 10, 10)))
    assert prepared.inputs.shape == (1, 3, 64, 96)
    assert isinstance(prepared.meta, Placement)


def test_backends_are_compared_on_boxes(tmp_path: Path) -> None:
    wide = _shelf(tmp_path / "w.png", (300, 100), [(30, 20, 60, "red"), (200, 30, 50, "blue")])
    det = GridDetector()
    eager = Engine(det, backend="eager", num_workers=0)
    x = eager.prepare(GridBoxes(), wide).inputs
    ref = eager.forward(GridBoxes(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 on CPUs without bf16 units
        got = Engine(det, backend="bf16", num_workers=0).forward(GridBoxes(), x)
    report = compare_outputs(ref, got, BOXES)
    assert TOLERANCES["bf16"].ok(report), report
    moved = [b.clone() for b in ref]
    moved[0][0, :4] += 6.0  # one box shifted by most of a cell
    assert compare_outputs(ref, moved, BOXES)["top1_agreement"] == 0.0
    assert compare_outputs(ref, [b[:-1] for b in ref], BOXES)["top1_agreement"] == 0.0


def test_backends_are_compared_on_the_boxes_a_user_can_see() -> None:
    """Boxes below COMPARED_FROM (kept for COCO's mAP) may come and go between runtimes
    without failing the comparison; a box above it may not."""
    from vitrina.engine.geometry import COMPARED_FROM

    ref = [
        torch.tensor(
            [[10, 10, 50, 50, 0.9, 1], [60, 10, 90, 40, 0.3, 2], [5, 5, 20, 20, 0.002, 3]],
            dtype=torch.float32,
        )
    ]
    low_gone = [ref[0][:2]]
    low_moved = [ref[0].clone()]
    low_moved[0][2, :4] += 9.0
    for got in (low_gone, low_moved):
        assert compare_outputs(ref, got, BOXES)["top1_agreement"] == 1.0
    seen_gone = [ref[0][[0, 2]]]
    assert ref[0][1, 4] >= COMPARED_FROM
    assert compare_outputs(ref, seen_gone, BOXES)["top1_agreement"] == 0.0


def test_a_run_left_unconsumed_at_exit_does_not_abort_the_process(tmp_path: Path) -> None:
    """``next(engine.run(...))`` and then the interpreter exits (a notebook kernel shut down,
    a script that took the first result): the model stage is stopped before finalisation.
    Before, its thread was torn down inside a torch call: "terminate called without an
    active exception", exit status 134."""
    import subprocess
    import sys

    for i in range(80):  # enough that the model stage is still busy when the script ends
        make_image(tmp_path / "photos" / f"{i:02d}.png", COLORS["red"], seed=i)
    script = f"""
import sys
from pathlib import Path
import vitrina
from vitrina.engine import Engine, Logits
model = vitrina.create("tutorial_cnn", num_classes=2)
engine = Engine(model, backend="eager", batch_size=2, num_workers=2)
results = engine.run(Logits(), sorted(Path({str(tmp_path / "photos")!r}).iterdir()))
print(next(results).ok)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True" and "terminate called" not in done.stderr
