"""``--ray``: sort, embed and index build on a real local Ray (2 CPUs, small object store)
give what the single-process path gives, survive an actor killed mid-run, and resume from
the shards a killed run left."""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_image, run_cli

ray = pytest.importorskip("ray", reason="the [scale] extra (Ray) is not installed")

from vitrina.scale import RayOptions, SortJob, ray_embed_files, ray_sort_folder  # noqa: E402
from vitrina.scale.ray_batch import RunStats, run_job, work_dir_for  # noqa: E402

OPTIONS = RayOptions(workers=2, block_rows=8)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, a 200 MB object store, no dashboard."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        log_to_driver=False,
    )
    # the crashing job below is defined here, in a module the workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """30 photos of three colours, one broken file."""
    d = tmp_path / "photos"
    for ci, (name, rgb) in enumerate(COLORS.items()):
        for i in range(10):
            make_image(d / f"{name}-{i:02d}.png", rgb, seed=7000 + ci * 100 + i)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def _manifest(out: Path) -> dict[str, tuple[str, str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return {
            Path(r["source"]).name: (r["label"], r["confidence"], r["status"])
            for r in csv.DictReader(fh)
        }


def test_ray_sort_matches_single_process(local_ray, toy_run, folder, tmp_path):
    from vitrina.classify.sort import sort_folder

    plain = sort_folder(folder, toy_run, tmp_path / "plain", backend="eager")
    on_ray = ray_sort_folder(folder, toy_run, tmp_path / "ray", ray=OPTIONS, backend="eager")
    assert on_ray.counts == plain.counts
    assert _manifest(tmp_path / "ray") == _manifest(tmp_path / "plain")  # labels, scores
    assert len(_manifest(tmp_path / "ray")) == 31
    assert "ray: 2 workers, backend eager" in on_ray.backend
    assert not work_dir_for(tmp_path / "ray").exists()  # complete: shards removed
    assert sorted(p.name for p in (tmp_path / "ray" / "unreadable").iterdir()) == ["broken.jpg"]


@pytest.mark.slow
def test_ray_embed_and_index_match_single_process(local_ray, toy_run, folder, tmp_path):
    from vitrina.embed.files import embed_files
    from vitrina.scale import ray_index_build
    from vitrina.search import Index

    one = embed_files(str(toy_run), [folder], tmp_path / "plain.npy", backend="eager")
    many = ray_embed_files(
        str(toy_run), [folder], tmp_path / "ray.npy", ray=OPTIONS, backend="eager"
    )
    assert many.result.paths == one.result.paths
    assert [p for p, _ in many.result.errors] == [p for p, _ in one.result.errors]
    np.testing.assert_allclose(many.result.vectors, one.result.vectors, atol=1e-5)
    assert np.allclose(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "plain.npy"), atol=1e-5)
    assert many.summary()["fingerprint"] == one.summary()["fingerprint"]
    assert not work_dir_for(tmp_path / "ray.npy").exists()

    idx = ray_index_build(
        folder, tmp_path / "ray.index", ray=OPTIONS, model=str(toy_run), backend="eager"
    )
    ref = Index.build(folder, tmp_path / "plain.index", model=str(toy_run), backend="eager")
    assert len(idx) == len(ref) == 30
    queries = one.result.vectors[:3]
    assert [[h.path for h in r.hits] for r in idx.search(queries, k=5)] == [
        [h.path for h in r.hits] for r in ref.search(queries, k=5)
    ]
    idx.close()
    ref.close()


@dataclass(frozen=True)
class CrashOnce(SortJob):
    """The sort job, but the actor that meets ``crash_on`` dies (os._exit) the first time."""

    crash_on: str = ""
    marker: str = ""

    def columns(self, results):
        if any(str(r.item).endswith(self.crash_on) for r in results) and not os.path.exists(
            self.marker
        ):
            Path(self.marker).write_text("crashed once")
            os._exit(1)
        return super().columns(results)


@pytest.mark.slow
def test_ray_survives_an_actor_killed_mid_run(local_ray, toy_run, folder, tmp_path):
    from vitrina.classify import load

    marker = tmp_path / "crashed"
    job = CrashOnce(
        model=str(toy_run), backend="eager", crash_on="green-04.png", marker=str(marker)
    )
    paths = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    rows = {r["path"]: r for r in run_job(job, paths, OPTIONS, work_dir=tmp_path / "work")}
    assert marker.exists()  # an actor did die
    assert set(rows) == {str(p) for p in paths}  # and every photo has its one result
    for p in load(toy_run).predict(paths, backend="eager"):
        assert rows[str(p.path)]["label"] == p.label
        assert rows[str(p.path)]["score"] == pytest.approx(p.confidence, abs=1e-6)


@pytest.mark.slow
def test_ray_sort_resumes_from_shards_after_a_kill(local_ray, toy_run, folder, tmp_path):
    out = tmp_path / "sorted"

    class Killed(Exception):
        pass

    placed = []

    def die_after_ten(item):
        placed.append(item)
        if len(placed) == 10:
            raise Killed  # the driver dies mid-run: shards and manifest stay as they are

    with pytest.raises(Killed):
        ray_sort_folder(folder, toy_run, out, ray=OPTIONS, backend="eager", on_item=die_after_ten)
    work = work_dir_for(out)
    assert list(work.glob("part-*.parquet"))  # shards were written before the kill

    stats = RunStats()
    job = SortJob(model=str(toy_run), backend="eager")
    left = list(run_job(job, sorted(folder.iterdir()), OPTIONS, work_dir=work, stats=stats))
    assert stats.resumed >= 8 and len(left) == 31  # whole blocks came back from the shards

    summary = ray_sort_folder(folder, toy_run, out, ray=OPTIONS, backend="eager")
    assert summary.skipped_done == 10  # sort's own journal: nothing placed twice
    manifest = _manifest(out)
    assert len(manifest) == 31
    files = [p.name for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv"]
    assert sorted(files) == sorted(p.name for p in folder.iterdir())  # no duplicates, none lost
    assert not work.exists()


def test_bare_ray_flag_means_local():
    from vitrina.cli._common import bare_ray_flag

    assert bare_ray_flag(["sort", "p", "--ray"]) == ["sort", "p", "--ray=local"]
    assert bare_ray_flag(["sort", "p", "--ray", "-o", "x"]) == [
        "sort",
        "p",
        "--ray=local",
        "-o",
        "x",
    ]
    assert bare_ray_flag(["sort", "p", "--ray", "10.0.0.5:6379"])[-1] == "10.0.0.5:6379"
    assert bare_ray_flag(["sort", "--", "--ray"]) == ["sort", "--", "--ray"]


def test_shards_keep_only_results_of_unchanged_files_of_the_same_job(tmp_path, folder):
    """Resuming: a shard row counts for a photo only if the photo is as it was (size, mtime)
    and the job (model, backend) is the same; no Ray needed to read shards."""
    from vitrina.scale.ray_batch import _Shards

    a, b = str(folder / "red-00.png"), str(folder / "red-01.png")
    job = SortJob(model="efficientnet_lite0", backend="eager")
    batch = {
        "path": np.array([a, b], dtype=object),
        "label": np.array(["red", "red"], dtype=object),
        "score": np.array([0.9, 0.8]),
        "top": np.array(['[["red", 0.9]]', '[["red", 0.8]]'], dtype=object),
        "error": np.array(["", ""], dtype=object),
    }
    _Shards(tmp_path / "w", job).write(job.table(batch))
    assert set(_Shards(tmp_path / "w", job).done({a, b})) == {a, b}
    make_image(Path(b), COLORS["blue"], seed=99)  # b changed since its result was written
    os.utime(b, ns=(1, 1))
    rows = _Shards(tmp_path / "w", job).done({a, b})
    assert set(rows) == {a} and rows[a]["label"] == "red" and rows[a]["score"] == 0.9
    (tmp_path / "w" / ".vitrina-tmp-0123.parquet").write_bytes(b"a shard cut by a kill")
    other = SortJob(model="efficientnet_lite0", backend="onnx")
    assert _Shards(tmp_path / "w", other).done({a, b}) == {}  # another job: shards dropped
    assert sorted(f.name for f in (tmp_path / "w").iterdir()) == ["job.json"]
    # every photo already in shards: nothing to run, so Ray is not even started
    _Shards(tmp_path / "w", job).write(job.table(batch))
    got = list(run_job(job, [a], RayOptions(address="auto"), work_dir=tmp_path / "w"))
    assert [r["path"] for r in got] == [a]


def test_ray_option_errors_are_one_line(capsys, tmp_path, folder, monkeypatch):
    from vitrina.errors import VitrinaError
    from vitrina.scale import import_ray

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # the [scale] extra not installed
        with pytest.raises(VitrinaError, match=r"pip install 'vitrina\[scale\]'"):
            import_ray()
    with pytest.raises(Exception, match="not a Ray address"):
        RayOptions(address=str(folder))
    code, _, err = run_cli(
        capsys,
        "embed",
        "efficientnet_lite0",
        "--out",
        str(tmp_path / "v.npy"),
        "--ray",
        str(folder),
    )
    assert code == 1 and "not a Ray address" in err and "Traceback" not in err


@pytest.mark.slow
def test_ray_detect_predict_gives_the_same_boxes(local_ray, tmp_path, capsys):
    import json
    import shutil

    from test_detect import street_photo

    photos = tmp_path / "street"
    photos.mkdir()
    street_photo(photos / "street-0.png")
    for i in range(1, 6):
        shutil.copy(photos / "street-0.png", photos / f"street-{i}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    code, _, err = run_cli(
        capsys, "detect", "predict", "hog_people", photos, "--out", tmp_path / "one.json"
    )
    assert code == 0, err
    code, _, err = run_cli(
        capsys,
        "detect",
        "predict",
        "hog_people",
        photos,
        "--out",
        tmp_path / "ray.json",
        "--crops",
        tmp_path / "crops",
        "--ray-workers",
        "2",
        "--ray",  # bare: this machine (here: the module's Ray)
    )
    assert code == 0, err
    one = json.loads((tmp_path / "one.json").read_text())["photos"]
    many = json.loads((tmp_path / "ray.json").read_text())["photos"]
    assert many == one  # same photos, order, boxes, scores; the broken one with its error
    assert sum(len(p["boxes"]) for p in many) == 12
    assert len(list((tmp_path / "crops" / "person").glob("*.png"))) == 12
    assert not work_dir_for(tmp_path / "ray.json").exists()
