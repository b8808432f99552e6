"""Batch inference on Ray Data: ``vitrina sort / embed / index build --ray [ADDRESS]``.

The same commands, the same results, more machines. The photo list becomes a Ray Dataset;
decoding and the model run in ``map_batches`` on a pool of actors (one per worker CPU by
default), each holding one vitrina :class:`~vitrina.engine.Engine` built once per actor (so
``--backend auto`` measures and chooses once per actor, on the machine it runs on) and
running the same engine task as the single-process path (:class:`~vitrina.engine.Logits`
for sort, the embedder's :class:`~vitrina.engine.Embedding` for embed and index).

Results stream back to the driver, which writes them as Parquet shards (``path``, the
result, ``error``, and the file's size and mtime) into a work folder next to the output
(``OUT.ray-shards/``), each shard under a temporary name then renamed, and hands them to the
one writer the single-process path already has: sort's crash-safe placement and manifest
journal, ``write_vectors`` for embed, ``Index.add_vectors`` for index build. Crash safety is
therefore unchanged, and a run killed mid-way resumes: the paths already in shards (same
job, same file size and mtime) are not run again. The work folder is removed when the
output is complete.

An actor that dies (a worker killed, a machine lost) is restarted by Ray and its batch run
again (Ray Data's actor pools retry: ``max_restarts=-1``, ``max_task_retries=-1``); results
are keyed by path, so a batch run twice is counted once.

Ray is the optional extra ``[scale]`` and is imported only here, when a run starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vitrina.embed import Embedder, EmbeddingSpec, EmbedResult
from vitrina.errors import VitrinaError

if TYPE_CHECKING:
    from vitrina.classify.sort import SortSummary
    from vitrina.embed.files import EmbedFilesRun
    from vitrina.engine import Engine, Task, TaskResult
    from vitrina.search import Index

__all__ = [
    "SHARDS_SUFFIX",
    "DetectJob",
    "EmbedJob",
    "RayEmbedder",
    "RayJob",
    "RayOptions",
    "SortJob",
    "import_ray",
    "ray_embed_files",
    "ray_index_build",
    "ray_predict_photos",
    "ray_sort_folder",
    "run_job",
    "work_dir_for",
]

SHARDS_SUFFIX = ".ray-shards"
JOB_FILE = "job.json"
MISSING_RAY = "--ray needs Ray, which is not installed: pip install 'vitrina[scale]'"
_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.\-]+:\d+)$")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data loaded; one clear line when the extra is missing."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise VitrinaError(MISSING_RAY) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a ``--ray`` run goes.

    Args:
        address: ``local`` starts Ray on this machine for the run (and stops it after);
            ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins a running cluster (whose
            workers must have vitrina installed and see the photos at the same paths).
        workers: actors in the pool; ``None``: one per CPU the cluster has (local: every core
            of this machine) divided by ``cpus_per_worker``.
        cpus_per_worker: CPUs each actor reserves, and the threads its engine uses.
        object_store_mb: the object store of a local Ray (results are small: vectors and
            labels; 200 MB leaves a shared machine its memory).
        block_rows: photos per Ray block, i.e. per shard (default: four batches); smaller
            blocks lose less work to a kill and balance better, bigger ones cost less overhead.
    """

    address: str = "local"
    workers: int | None = None
    cpus_per_worker: float = 1.0
    object_store_mb: int = 200
    block_rows: int | None = None

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.address or ""):
            raise VitrinaError(
                f"--ray {self.address!r} is not a Ray address (auto, HOST:PORT or ray://HOST:PORT;"
                " plain --ray starts Ray on this machine): if that is a photo folder, put --ray "
                "after it or write --ray=ADDRESS"
            )
        if self.workers is not None and self.workers < 1:
            raise VitrinaError(f"--ray-workers {self.workers}: at least 1")
        if self.cpus_per_worker <= 0:
            raise VitrinaError("cpus_per_worker must be > 0")

    @property
    def local(self) -> bool:
        return self.address == "local"


def work_dir_for(out: str | os.PathLike[str]) -> Path:
    """The shards' folder next to an output: ``sorted/`` -> ``sorted.ray-shards/``."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + SHARDS_SUFFIX)


def _remove_work_dir(work: Path | None) -> None:
    """The output is complete: the shards (our own files only) are not needed any more."""
    if work is None or not work.is_dir():
        return
    from vitrina.io import TEMP_PREFIX

    for f in work.iterdir():  # shards, the key, and temporaries a kill left mid-write
        if f.name == JOB_FILE or f.suffix == ".parquet" or f.name.startswith(TEMP_PREFIX):
            f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()


# ---------------------------------------------------------------------------------- jobs


class RayJob:
    """What the actors run, and how its results are stored in a shard.

    Subclasses are frozen dataclasses (they pickle to the actors): :meth:`build` makes the
    engine and task in the actor, :meth:`columns` turns a batch's results into numpy columns,
    :meth:`table` / :meth:`rows` write and read them as Arrow (shards), and :meth:`key`
    names what makes two runs' results interchangeable (a resumed run reuses shards only of
    the same key)."""

    kind: ClassVar[str] = "job"
    batch_size: int = 16
    threads: int = 1

    def key(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self) -> tuple[Any, Task | None]:
        """In the actor: what runs the batches (an engine, a detector) and the task."""
        raise NotImplementedError

    def run(self, runner: Any, task: Task | None, paths: list[str]) -> list[TaskResult]:
        """One batch's results, one per path (in order)."""
        return sorted(runner.run(task, paths), key=lambda r: r.index)

    def describe(self, runner: Any) -> str:
        """The backend that ran (what ``auto`` chose in this actor)."""
        return str(runner.backend_name)

    def columns(self, results: Sequence[TaskResult]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def table(self, batch: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def rows(self, table: Any) -> Iterator[dict[str, Any]]:
        raise NotImplementedError


def _model_identity(model: str) -> str:
    """A run folder's resolved path and checkpoint hash, or the zoo name."""
    from vitrina.runs import is_run_dir, read_run

    if is_run_dir(model):
        return f"{Path(model).resolve()}|{read_run(model).checkpoint_sha256 or ''}"
    return model


@dataclass(frozen=True)
class SortJob(RayJob):
    """Classify photos (the :class:`~vitrina.engine.Logits` task, top 3), as ``sort`` does."""

    model: str = ""
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 16
    threads: int = 1
    top_k: int = 3
    kind: ClassVar[str] = "sort"

    def key(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": _model_identity(self.model),
            "backend": self.backend,
            "top_k": self.top_k,
        }

    def build(self) -> tuple[Engine, Task]:
        from vitrina.classify.classifier import load
        from vitrina.engine import Logits

        clf = load(self.model)
        object.__setattr__(self, "_classes", clf.classes)
        engine = clf.engine(
            backend=self.backend,
            device=self.device,
            batch_size=self.batch_size,
            num_workers=0,
            threads=self.threads,
        )
        return engine, Logits(top_k=self.top_k)

    def columns(self, results: Sequence[TaskResult]) -> dict[str, np.ndarray]:
        names: list[str] = self._classes  # type: ignore[attr-defined]
        labels, scores, tops, errors = [], [], [], []
        for r in results:
            if r.ok:
                top = [(names[j], p) for j, p in r.value.top]
                labels.append(top[0][0])
                scores.append(top[0][1])
                tops.append(json.dumps(top))
                errors.append("")
            else:
                labels.append("")
                scores.append(0.0)
                tops.append("[]")
                errors.append(r.error or "unreadable")
        return {
            "label": np.array(labels, dtype=object),
            "score": np.array(scores, dtype=np.float64),
            "top": np.array(tops, dtype=object),
            "error": np.array(errors, dtype=object),
        }

    def table(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        return pa.table(
            {
                "path": pa.array([str(p) for p in batch["path"]], pa.string()),
                "label": pa.array([str(v) for v in batch["label"]], pa.string()),
                "score": pa.array(np.asarray(batch["score"], np.float64), pa.float64()),
                "top": pa.array([str(v) for v in batch["top"]], pa.string()),
                "error": pa.array([str(v) for v in batch["error"]], pa.string()),
            }
        )

    def rows(self, table: Any) -> Iterator[dict[str, Any]]:
        yield from table.select(["path", "label", "score", "top", "error"]).to_pylist()


@dataclass(frozen=True)
class EmbedJob(RayJob):
    """Embed photos with an :class:`~vitrina.embed.EmbeddingSpec` (as a dict: it pickles)."""

    spec: tuple[tuple[str, Any], ...] = ()
    fingerprint: str = ""
    dim: int = 0
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    threads: int = 1
    kind: ClassVar[str] = "embed"

    def key(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "backend": self.backend}

    def build(self) -> tuple[Engine, Task]:
        emb = Embedder(
            EmbeddingSpec.from_dict(dict(self.spec)),
            backend=self.backend,
            device=self.device,
            batch_size=self.batch_size,
            num_workers=0,
            threads=self.threads,
        )
        if emb.fingerprint != self.fingerprint:
            raise VitrinaError(
                f"{emb.spec.model} embeds as {emb.fingerprint} on this worker, "
                f"{self.fingerprint} on the driver: the workers must see the same model files"
            )
        return emb.engine, emb.task

    def columns(self, results: Sequence[TaskResult]) -> dict[str, np.ndarray]:
        vectors = np.zeros((len(results), self.dim), dtype=np.float32)
        errors = []
        for i, r in enumerate(results):
            if r.ok:
                vectors[i] = r.value
            errors.append("" if r.ok else (r.error or "unreadable"))
        return {"vector": vectors, "error": np.array(errors, dtype=object)}

    def table(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        vectors = np.ascontiguousarray(batch["vector"], dtype=np.float32).reshape(-1, self.dim)
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), self.dim
        )
        return pa.table(
            {
                "path": pa.array([str(p) for p in batch["path"]], pa.string()),
                "vector": column,
                "error": pa.array([str(v) for v in batch["error"]], pa.string()),
            }
        )

    def rows(self, table: Any) -> Iterator[dict[str, Any]]:
        n = table.num_rows
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, dtype=np.float32).reshape(n, self.dim)
        paths = table.column("path").to_pylist()
        errors = table.column("error").to_pylist()
        for i in range(n):
            yield {"path": paths[i], "vector": vectors[i], "error": errors[i]}


@dataclass(frozen=True)
class DetectJob(RayJob):
    """Find boxes (a detection run or a named detector, as ``detect predict``); each
    photo's :class:`~vitrina.detect.Detections` is stored as JSON (float32 values round-trip
    exactly)."""

    detector: str = ""
    min_score: float = 0.5
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    threads: int = 1
    classifier: str | None = None  # a classification run naming the boxes
    flip: bool = False  # also each photo mirrored, the answers fused
    scales: tuple[float, ...] = (1.0,)  # also each photo at these input sizes, fused
    kind: ClassVar[str] = "detect"

    def key(self) -> dict[str, Any]:
        key = {
            "kind": self.kind,
            "detector": _model_identity(self.detector),
            "backend": self.backend,
            "min_score": self.min_score,
        }
        if self.classifier is not None:
            key["classifier"] = _model_identity(self.classifier)
        if self.flip:  # (absent when off: shards of runs made before stay valid)
            key["flip"] = True
        if tuple(self.scales) != (1.0,):
            key["scales"] = [float(s) for s in self.scales]
        return key

    def build(self) -> tuple[Any, Task | None]:
        from vitrina.detect import load_detector

        det = load_detector(
            self.detector,
            backend=self.backend,
            device=self.device,
            batch_size=self.batch_size,
            num_workers=0,
            classifier=self.classifier,
            flip=self.flip,
            scales=self.scales,
        )
        return det, None

    def run(self, runner: Any, task: Task | None, paths: list[str]) -> list[TaskResult]:
        found = runner.detect(paths, min_score=self.min_score)
        return sorted(found, key=lambda r: r.index)

    def describe(self, runner: Any) -> str:
        return str(runner.describe())

    def columns(self, results: Sequence[TaskResult]) -> dict[str, np.ndarray]:
        found, errors = [], []
        for r in results:
            if r.ok:
                d = r.value
                found.append(
                    json.dumps(
                        {
                            "boxes": d.boxes.tolist(),
                            "scores": d.scores.tolist(),
                            "labels": d.labels.tolist(),
                            "size": list(d.size),
                        }
                    )
                )
                errors.append("")
            else:
                found.append("")
                errors.append(r.error or "unreadable")
        return {
            "detections": np.array(found, dtype=object),
            "error": np.array(errors, dtype=object),
        }

    def table(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        return pa.table(
            {
                "path": pa.array([str(p) for p in batch["path"]], pa.string()),
                "detections": pa.array([str(v) for v in batch["detections"]], pa.string()),
                "error": pa.array([str(v) for v in batch["error"]], pa.string()),
            }
        )

    def rows(self, table: Any) -> Iterator[dict[str, Any]]:
        yield from table.select(["path", "detections", "error"]).to_pylist()


class EngineActor:
    """One Ray actor: one engine, built once (the backend chosen once, here), run per batch."""

    def __init__(self, job: RayJob) -> None:
        import torch

        torch.set_num_threads(max(1, int(job.threads)))
        self.job = job
        self.runner, self.task = job.build()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        cols = self.job.columns(self.job.run(self.runner, self.task, paths))
        cols["path"] = np.array(paths, dtype=object)
        cols["backend"] = np.array([self.job.describe(self.runner)] * len(paths), dtype=object)
        return cols


# ---------------------------------------------------------------------------------- driver


@contextlib.contextmanager
def _ray_session(options: RayOptions) -> Iterator[Any]:
    """Ray for the run: the caller's if one is initialised, else started (local) or joined
    (an address) here and shut down after."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if options.local:
            cpus = None
            if options.workers is not None:
                cpus = max(1, math.ceil(options.workers * options.cpus_per_worker))
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=options.object_store_mb * 2**20,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            try:
                ray.init(
                    address=options.address, log_to_driver=False, logging_level=logging.WARNING
                )
            except ConnectionError as e:
                raise VitrinaError(
                    f"--ray {options.address}: no Ray cluster there ({str(e).splitlines()[0]})"
                ) from None
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the command draws its own bar
    quiet = logging.getLogger("ray.data")  # "Starting execution of Dataset..." per run
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        quiet.setLevel(level)
        if started:
            ray.shutdown()


def _pool_size(ray: Any, options: RayOptions) -> int:
    if options.workers is not None:
        return options.workers
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // options.cpus_per_worker))


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


class _Shards:
    """The work folder: ``job.json`` (the job's key) and ``part-*.parquet`` shards, each a
    job's table plus the file's ``size`` and ``mtime_ns`` when its result was written."""

    def __init__(self, folder: Path, job: RayJob) -> None:
        from vitrina.io import atomic_write_text

        self.folder, self.job = folder, job
        key = job.key()
        stored = None
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads((folder / JOB_FILE).read_text())
        if stored != key:
            _remove_work_dir(folder)  # another job's shards (other model, backend): not ours
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / JOB_FILE, json.dumps(key, sort_keys=True))

    def done(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """Results of ``wanted`` paths already written, for files unchanged since."""
        import pyarrow.parquet as pq

        found: dict[str, dict[str, Any]] = {}
        for f in sorted(self.folder.glob("part-*.parquet")):
            try:
                table = pq.read_table(f)
            except (OSError, ValueError):
                continue  # unreadable shard: its photos are run again
            sizes = table.column("size").to_pylist()
            mtimes = table.column("mtime_ns").to_pylist()
            for row, size, mtime in zip(self.job.rows(table), sizes, mtimes, strict=True):
                p = row["path"]
                if p in wanted and _stat(p) == (size, mtime):
                    found[p] = row
        return found

    def write(self, table: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from vitrina.io import atomic_write_bytes

        stats = [_stat(p) for p in table.column("path").to_pylist()]
        table = table.append_column("size", pa.array([s for s, _ in stats], pa.int64()))
        table = table.append_column("mtime_ns", pa.array([m for _, m in stats], pa.int64()))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(
            self.folder / f"part-{uuid.uuid4().hex}.parquet", sink.getvalue().to_pybytes()
        )


@dataclass
class RunStats:
    """What a Ray run did: photos taken from shards, photos run, workers, backends chosen."""

    resumed: int = 0
    ran: int = 0
    workers: int = 0
    backends: tuple[str, ...] = ()

    def describe(self) -> str:
        chosen = ", ".join(self.backends) or "-"
        resumed = f", {self.resumed} from an earlier run's shards" if self.resumed else ""
        return f"ray: {self.workers} workers, backend {chosen}{resumed}"


def run_job(
    job: RayJob,
    paths: Sequence[str | os.PathLike[str]],
    options: RayOptions,
    *,
    work_dir: Path | None = None,
    stats: RunStats | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """One result row per path (``path``, ``error`` and the job's fields), in the order they
    arrive: first those in ``work_dir``'s shards, then those the actors compute, each block
    written as a shard before its rows are given out. ``work_dir=None``: no shards (a dry run)."""
    paths = [str(p) for p in paths]
    stats = stats if stats is not None else RunStats()
    total = len(paths)
    shards = _Shards(work_dir, job) if work_dir is not None else None
    done = shards.done(set(paths)) if shards else {}
    stats.resumed = len(done)
    yield from done.values()
    if on_progress and done:
        on_progress(len(done), total)
    todo = [p for p in paths if p not in done]
    del done
    if not todo:
        return
    with _ray_session(options) as ray:
        block = options.block_rows or job.batch_size * 4
        blocks = max(1, math.ceil(len(todo) / block))
        # no more actors than blocks: an actor without a block only costs its start-up
        workers = stats.workers = min(_pool_size(ray, options), blocks)
        ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
        ds = ds.map_batches(
            EngineActor,
            fn_constructor_args=(job,),
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=options.cpus_per_worker,
        )
        seen: set[str] = set()
        backends: set[str] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if not len(batch["path"]):
                continue
            backends.update(str(b) for b in batch["backend"])
            table = job.table(batch)
            if shards:
                shards.write(table)
            for row in job.rows(table):
                if row["path"] not in seen:
                    seen.add(row["path"])
                    yield row
            stats.ran = len(seen)
            stats.backends = tuple(sorted(backends))
            if on_progress:
                on_progress(stats.resumed + len(seen), total)


# ---------------------------------------------------------------------------------- commands


def ray_sort_folder(
    photos_dir: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ray: RayOptions,
    min_confidence: float = 0.5,
    method: str = "copy",
    dry_run: bool = False,
    recursive: bool = False,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
    on_item: Callable[[Any], None] | None = None,
    keep_items: bool = True,
    report: str | os.PathLike[str] | None = None,
    sheet: str | os.PathLike[str] | None = None,
) -> SortSummary:
    """:func:`vitrina.classify.sort.sort_folder` with the predictions made on Ray.

    Placement, the manifest journal, never-overwrite names and resuming are sort's own; the
    shards (``OUT.ray-shards/``) add that photos classified before a kill are not classified
    again. A dry run writes no shards."""
    from vitrina.classify.classifier import Prediction
    from vitrina.classify.sort import sort_folder

    job = SortJob(
        model=str(model),
        backend=backend,
        device=device,
        batch_size=batch_size,
        threads=max(1, int(ray.cpus_per_worker)),
    )
    work = None if dry_run else work_dir_for(out_dir)
    stats = RunStats()

    def predict(todo: list[Path]) -> Iterator[Prediction]:
        for row in run_job(job, todo, ray, work_dir=work, stats=stats):
            if row["error"]:
                yield Prediction(Path(row["path"]), None, 0.0, [], row["error"])
                continue
            top = [(str(lbl), float(p)) for lbl, p in json.loads(row["top"])]
            yield Prediction(Path(row["path"]), row["label"], float(row["score"]), top)

    summary = sort_folder(
        photos_dir,
        model,
        out_dir,
        min_confidence=min_confidence,
        method=method,
        dry_run=dry_run,
        recursive=recursive,
        on_progress=on_progress,
        on_item=on_item,
        keep_items=keep_items,
        predict=predict,
        report=report,
        sheet=sheet,
    )
    summary.backend = stats.describe()
    if not summary.errors:
        _remove_work_dir(work)  # the manifest holds every placement now
    return summary


def ray_predict_photos(
    detector: str | os.PathLike[str],
    photos: Sequence[str | os.PathLike[str]],
    *,
    ray: RayOptions,
    min_score: float | None = None,
    annotate: str | os.PathLike[str] | None = None,
    crops: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 8,
    classifier: str | os.PathLike[str] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    work_dir: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, Iterator[Any]]:
    """:func:`vitrina.detect.predict_photos` with the boxes found on Ray: ``(the detector as
    loaded here, for its classes; the photos' :class:`~vitrina.detect.PhotoBoxes` in input
    order)``. Annotated copies and crops are written by this process (one writer), as
    without Ray. ``classifier``: a classification run naming the boxes, ``flip``: each photo
    also mirrored, ``scales``: each photo also at these input sizes (as
    :func:`~vitrina.detect.load_detector`). ``work_dir``: the shards'
    folder (``None``: no resuming)."""
    from vitrina.detect import Detections, load_detector
    from vitrina.detect.predict import photo_boxes
    from vitrina.engine import TaskResult

    det = load_detector(
        detector,
        backend=backend,
        device=device,
        batch_size=batch_size,
        classifier=classifier,
        flip=flip,
        scales=scales,
    )
    floor = det.default_min_score if min_score is None else float(min_score)
    job = DetectJob(
        detector=str(detector),
        classifier=None if classifier is None else str(classifier),
        flip=flip,
        scales=tuple(float(s) for s in scales),
        min_score=floor,
        backend=backend,
        device=device,
        batch_size=batch_size,
        threads=max(1, int(ray.cpus_per_worker)),
    )
    paths = [str(p) for p in photos]

    def results() -> Iterator[Any]:
        got = {
            r["path"]: r
            for r in run_job(job, paths, ray, work_dir=work_dir, on_progress=on_progress)
        }
        for i, p in enumerate(paths):
            row = got[p]
            if row["error"]:
                yield photo_boxes(TaskResult(i, p, error=row["error"]), det.classes)
                continue
            d = json.loads(row["detections"])
            found = Detections(d["boxes"], d["scores"], d["labels"], tuple(d["size"]))
            yield photo_boxes(
                TaskResult(i, p, value=found), det.classes, annotate=annotate, crops=crops
            )
        _remove_work_dir(work_dir)

    return det, results()


class RayEmbedder(Embedder):
    """An :class:`~vitrina.embed.Embedder` whose :meth:`embed_paths` runs on Ray.

    The driver loads the model once for what describes the vectors (dimension, fingerprint,
    label); the actors load it again and embed. Everything else (``embed_images``) runs here.
    ``work_dir``: where the shards go (``None``: none, no resuming)."""

    def __init__(
        self,
        spec: EmbeddingSpec | str,
        *,
        ray: RayOptions,
        work_dir: Path | None = None,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        super().__init__(spec, backend=backend, device=device, batch_size=batch_size)
        self.ray_options = ray
        self.work_dir = work_dir
        self.stats = RunStats()
        self._requested = backend

    @property
    def backend_name(self) -> str:
        return self.stats.describe() if self.stats.workers else f"ray ({self._requested})"

    def job(self) -> EmbedJob:
        return EmbedJob(
            spec=tuple(sorted(self.spec.to_dict().items(), key=lambda kv: kv[0])),
            fingerprint=self.fingerprint,
            dim=self.dim,
            backend=self._requested,
            device=str(self._engine_kw["device"]),
            batch_size=int(self._engine_kw["batch_size"]),
            threads=max(1, int(self.ray_options.cpus_per_worker)),
        )

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> EmbedResult:
        """Vectors for the readable files, in input order (as :meth:`Embedder.embed_paths`)."""
        paths = [Path(p) for p in paths]
        got: dict[str, dict[str, Any]] = {}
        for row in run_job(
            self.job(),
            paths,
            self.ray_options,
            work_dir=self.work_dir,
            stats=self.stats,
            on_progress=on_progress,
        ):
            got[row["path"]] = row
        rows, kept, errors = [], [], []
        for p in paths:
            row = got[str(p)]
            if row["error"]:
                errors.append((p, row["error"]))
            else:
                rows.append(row["vector"])
                kept.append(p)
        vectors = (
            np.stack(rows).astype(np.float32, copy=False)
            if rows
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        return EmbedResult(vectors, kept, errors)


def ray_embed_files(
    model: str,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    ray: RayOptions,
    layers: Sequence[str] = (),
    pool: str = "avg",
    normalize: bool = True,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    recursive: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> EmbedFilesRun:
    """:func:`vitrina.embed.files.embed_files` with the vectors computed on Ray (shards in
    ``OUT.ray-shards/``; the vectors file is written once, atomically, at the end)."""
    from vitrina.embed.files import embed_files
    from vitrina.embed.output import output_files
    from vitrina.errors import refuse_existing

    refuse_existing(*output_files(out))  # before loading the model
    emb = RayEmbedder(
        EmbeddingSpec(model, tuple(layers), pool=pool, normalize=normalize),
        ray=ray,
        work_dir=work_dir_for(out),
        backend=backend,
        device=device,
        batch_size=batch_size,
    )
    run = embed_files(
        model, inputs, out, recursive=recursive, on_progress=on_progress, embedder=emb
    )
    _remove_work_dir(emb.work_dir)
    return run


def ray_index_build(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    ray: RayOptions,
    model: str,
    layers: Sequence[str] = (),
    metric: str = "cosine",
    kind: str = "auto",
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> Index:
    """:meth:`vitrina.search.Index.build` with the vectors computed on Ray; the index (one
    writer: ``Index.add_vectors`` in this process) is built exactly as without Ray."""
    from vitrina.search import Index

    emb = RayEmbedder(
        EmbeddingSpec(str(model), tuple(layers)),
        ray=ray,
        work_dir=work_dir_for(out),
        backend=backend,
        device=device,
        batch_size=batch_size,
    )
    idx = Index.build(
        source,
        out,
        embedder=emb,
        metric=metric,
        kind=kind,
        backend=backend,
        device=device,
        batch_size=batch_size,
        on_progress=on_progress,
    )
    _remove_work_dir(emb.work_dir)
    return idx
