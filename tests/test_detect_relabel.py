"""Two stages: annotated boxes cut into class folders (``vitrina data crops``), a classifier
trained on them, and a detector whose boxes that classifier names (``--classifier``).
Photos are generated (coloured shapes), never shared data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error, run_cli, toy_config
from detect_util import CLASSES, make_shapes, write_voc
from vitrina.classify import load as load_classifier
from vitrina.data.annotations import crop_annotated, read_annotated
from vitrina.detect import Detections, evaluate_detector, load_detector
from vitrina.detect.relabel import RelabeledDetector
from vitrina.engine import TaskResult, as_items


def _voc_set(root: Path, n: int, seed: int) -> Path:
    shots = make_shapes(root / "images", n, seed=seed)
    write_voc(shots, root / "annotations")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


class _BoxesOnly:
    """A detector that finds every true box (a little loose) but calls everything ``can``:
    where a one-class product detector stands before its boxes are named."""

    score_kind = "probability"
    default_min_score = 0.5

    def __init__(self, data: Path) -> None:
        s = read_annotated(data)
        self.truth = {p.path.name: p for p in s.photos}
        self.classes = list(s.classes)

    def detect(self, items, *, min_score=None, on_progress=None) -> Iterator[TaskResult]:
        for i, item in enumerate(as_items(items)[0]):
            p = self.truth[Path(item).name]
            boxes = p.boxes + np.array([-3, -2, 3, 2], np.float32)
            boxes = np.clip(boxes, 0, [*p.size, *p.size])
            scores = np.linspace(0.9, 0.8, len(boxes))
            yield TaskResult(i, item, Detections(boxes, scores, np.zeros(len(boxes)), p.size))

    def describe(self) -> str:
        return "boxes only"


@pytest.fixture(scope="module")
def shelves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("relabel")
    return _voc_set(root / "train", 24, seed=3), _voc_set(root / "held", 8, seed=42)


@pytest.fixture(scope="module")
def namer(shelves: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained on the crops of the training photos' boxes."""
    from vitrina.training import train_classifier

    root = tmp_path_factory.mktemp("namer")
    _, res = crop_annotated(shelves[0], root / "crops", margin=0.1)
    assert set(res.per_class) == set(CLASSES)
    cfg = toy_config(root / "crops", root / "run", epochs=8)
    return train_classifier(cfg, progress=False).run_dir


def test_crops_are_the_boxes_in_class_folders(shelves, tmp_path: Path, capsys) -> None:
    train, _ = shelves
    s = read_annotated(train)
    code, out, err = run_cli(capsys, "data", "crops", train, tmp_path / "c")
    assert code == 0, err
    files = sorted((tmp_path / "c").rglob("*.png"))
    assert len(files) == s.num_boxes and f"{s.num_boxes} crops" in out
    assert {f.parent.name for f in files} == set(CLASSES)
    first = s.photos[0]
    for k, (box, label) in enumerate(zip(first.boxes, first.labels, strict=True)):
        crop = tmp_path / "c" / CLASSES[label] / f"{first.path.stem}-{k}.png"
        w, h = Image.open(crop).size
        assert (w, h) == (int(box[2] - box[0]), int(box[3] - box[1]))  # whole-pixel boxes
        # the photo's own pixels, not a re-encoded copy
        photo = np.asarray(Image.open(first.path).convert("RGB"))
        x1, y1 = int(box[0]), int(box[1])
        assert (np.asarray(Image.open(crop)) == photo[y1 : y1 + h, x1 : x1 + w]).all()
    # a margin widens (clipped to the photo); an existing folder is refused, nothing written
    code, _, err = run_cli(capsys, "data", "crops", train, tmp_path / "m", "--margin", "0.2")
    assert code == 0, err
    widened = Image.open(tmp_path / "m" / CLASSES[first.labels[0]] / f"{first.path.stem}-0.png")
    assert widened.size[0] >= w and widened.size > (0, 0)
    code, _, err = run_cli(capsys, "data", "crops", train, tmp_path / "m")
    assert code == 1
    one_line_error(err, "exists and is not an empty folder")


def test_a_broken_photo_and_tiny_boxes_are_named_and_skipped(shelves, tmp_path: Path, capsys):
    data = _voc_set(tmp_path / "d", 3, seed=5)
    broken = sorted((data / "images").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n not really")
    code, out, err = run_cli(capsys, "data", "crops", data, tmp_path / "c", "--min-side", "1000")
    assert code == 0, err
    assert broken.name in err and "skipped" in err  # found while reading the set
    assert "0 crops" in out and "boxes under 1000 px skipped" in out
    assert "Traceback" not in err


def test_a_classifier_names_the_boxes_a_detector_found(shelves, namer: Path) -> None:
    _, held = shelves
    boxes_only = _BoxesOnly(held)
    alone = evaluate_detector(boxes_only, held).metrics
    named = RelabeledDetector(boxes_only, load_classifier(namer), backend="eager")
    assert sorted(named.classes) == sorted(CLASSES)  # the classifier's (folder order)
    both = evaluate_detector(named, held).metrics
    # every box was found either way; the classifier is what gets the labels right
    assert alone.mAP50 < 0.5 < both.mAP50, (alone.mAP50, both.mAP50)
    found = next(named.detect(sorted((held / "images").glob("*.png"))[:1], min_score=0.3))
    assert found.ok and len(found.value) > 0
    assert (found.value.scores >= 0.3).all() and (found.value.scores <= 0.9 + 1e-6).all()


def test_boxes_the_detector_calls_twice_are_named_once(shelves, namer: Path) -> None:
    _, held = shelves
    base = _BoxesOnly(held)

    class Twice(_BoxesOnly):
        def detect(self, items, **kw):
            for r in base.detect(items, **kw):
                d = r.value  # the same boxes again, nudged, under another class
                boxes = np.concatenate([d.boxes, d.boxes + 1])
                scores = np.concatenate([d.scores, d.scores - 0.1])
                labels = np.concatenate([d.labels, d.labels + 1])
                yield TaskResult(r.index, r.item, Detections(boxes, scores, labels, d.size))

    photo = sorted((held / "images").glob("*.png"))[0]
    truth = base.truth[photo.name]
    named = RelabeledDetector(Twice(held), load_classifier(namer), top_k=1, backend="eager")
    (r,) = list(named.detect([photo]))
    assert len(r.value) == len(truth.boxes)


def test_detect_commands_take_a_classifier(shelves, namer: Path, tmp_path: Path, capsys):
    from test_detect import _config
    from vitrina.detect import train_detector

    train, held = shelves
    run = train_detector(_config(train, tmp_path / "det", epochs=1), progress=False).run_dir
    det = load_detector(run, backend="eager", num_workers=0, classifier=namer)
    assert isinstance(det, RelabeledDetector) and "named by" in det.describe()
    code, out, err = run_cli(capsys, "detect", "evaluate", run, held, "--classifier", namer,
                             "--backend", "eager", "--workers", "0", "--json")  # fmt: skip
    assert code == 0, err
    assert set(json.loads(out)["per_class"]) == set(CLASSES)
    code, out, err = run_cli(capsys, "detect", "predict", run, held / "images", "--classifier",
                             namer, "--backend", "eager", "--workers", "0", "--min-score", "0")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert sorted(doc["classes"]) == sorted(CLASSES) and "named by" in doc["detector"]
    assert {b["label"] for r in doc["photos"] for b in r["boxes"]} <= set(CLASSES)
    code, _, err = run_cli(capsys, "detect", "predict", run, held / "images", "--classifier",
                           tmp_path / "nowhere")  # fmt: skip
    assert code == 1
    one_line_error(err, "nowhere")


def test_the_detectors_opinion_on_shared_classes_is_kept(namer: Path) -> None:
    classifier = load_classifier(namer)

    class Fixed:
        default_min_score = 0.5

        def __init__(self, classes):
            self.classes = classes

    boxes = np.array([[10, 10, 60, 60], [11, 10, 61, 60], [200, 200, 260, 280]], np.float32)
    found = Detections(boxes, np.array([0.8, 0.3, 0.6]), np.array([0, 1, 2]), (320, 320))
    same = RelabeledDetector(Fixed(list(CLASSES)), classifier, backend="eager")
    kept, scores, opinion = same._boxes(found)
    assert len(kept) == 2 and scores.tolist() == pytest.approx([0.8, 0.6])
    assert opinion.sum(1) == pytest.approx([1.0, 1.0])
    col = {c: i for i, c in enumerate(same.classes)}
    # the merged box: "can" 0.8 and "box" 0.3 from the two boxes merged into it
    assert opinion[0, col["can"]] > opinion[0, col["box"]] > opinion[0, col["bottle"]]
    assert opinion[1].argmax() == col["bottle"]
    # a one-class detector has no opinion on the classifier's classes: uniform
    product = RelabeledDetector(Fixed(["product"]), classifier, backend="eager")
    _, _, none = product._boxes(
        Detections(boxes, np.array([0.8, 0.3, 0.6]), np.zeros(3), (320, 320))
    )
    assert none == pytest.approx(np.full((2, 3), 1 / 3))
