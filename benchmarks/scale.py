"""More than one process: what the distributed paths buy on this machine (issue 20).

Subcommands (one per engine, each measures its baseline in the same run):

``torchrun``: ``vitrina train`` on 1 process against ``vitrina train --nproc N`` (torchrun's
DDP, gloo on CPUs), the same command and global batch, rounds interleaved. Each run is a new
process timed from launch; the script watches ``metrics.jsonl`` grow to timestamp every epoch.
Reported per process count (medians over rounds): training samples/s (the loop's own
``images_per_s``, all ranks' images, validation and start-up excluded), seconds per epoch
(wall, validation included), and the time from launch to the first epoch at the validation
accuracy every run reached (the lowest of the runs' best), start-up included. The default
task is LeNet-5 from scratch on scikit-learn's digits (1,437 labelled, 20% held out for
validation); ``--data``/``--arch``/``--mode`` train anything else.

    python benchmarks/scale.py torchrun [--nprocs 1,2] [--rounds 2] [--epochs 8]
    python benchmarks/scale.py torchrun --data ../shared/data/cats_dogs \\
        --arch efficientnet_lite0 --mode finetune --epochs 3 --batch-size 32

``rates``: what one core does per second at each stage of a batch job over photos (decode to
224 px, EfficientNet-Lite0, writing vectors and placing files, building HNSW / IVF-PQ
indexes), the figures ``docs/scaling.md`` sizes clusters from.

    python benchmarks/scale.py rates [--data ../shared/data/cats_dogs] [--vectors 20000]

``ray``: photos/s of ``sort_folder`` and ``embed_files`` in this process against
``ray_sort_folder`` / ``ray_embed_files`` on a local Ray with 1 and 2 actors
(``RayOptions(workers=n)``), each actor one engine. Each Ray figure is the wall time of the
whole call: actors start (import torch and vitrina, load the model, choose the backend), run,
and the driver writes the shards and places the photos / writes the vectors. Medians of
``--rounds`` interleaved rounds; ``--backend`` fixed for every path (default ``eager``). Sort
uses a cats/dogs probe on EfficientNet-Lite0 trained here on 10 photos per class (or
``--model RUN``), embed EfficientNet-Lite0's ImageNet embedding.

    python benchmarks/scale.py ray [--data ../shared/data/cats_dogs] [--limit 100] [--rounds 2]

On a shared machine the absolute figures move with the neighbours' load (printed before and
after): compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import DEFAULT_DATA, cpu_flags, data_dir, link_subset, machine, paths_by_class

SRC = Path(__file__).resolve().parents[1] / "src"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _watched_run(cmd: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; the seconds from launch at which each epoch's line reached
    ``out/metrics.jsonl``, the records, and the total wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stamps: list[float] = []
    log = out / "metrics.jsonl"
    while True:
        done = proc.poll() is not None
        lines = log.read_text().splitlines() if log.is_file() else []
        stamps += [time.perf_counter() - t0] * (len(lines) - len(stamps))
        if done:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    records = [json.loads(x) for x in log.read_text().splitlines()]
    return {"stamps": stamps, "records": records, "wall": wall}


def _digits(work: Path) -> Path:
    from vitrina.demo import write_digits

    labelled, _, _ = write_digits(work / "digits", seed=0)
    return labelled


def torchrun_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="scale.py torchrun", description=__doc__)
    ap.add_argument("--data", help="class-folder tree (default: scikit-learn's digits)")
    ap.add_argument("--arch", default="lenet5")
    ap.add_argument("--mode", default="scratch")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (all processes)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--nprocs", default="1,2", help="process counts, 1 = the plain path")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    nprocs = [int(n) for n in args.nprocs.split(",")]

    print(f"machine: {machine()}")
    print(f"CPU flags: {cpu_flags()}; load average before: {_load()}")
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(prefix="vitrina-scale-") as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else _digits(work)
        results: dict[int, list[dict[str, Any]]] = {n: [] for n in nprocs}
        for r in range(args.rounds):
            for n in nprocs:  # interleaved: the load's drift hits every count alike
                out = work / f"run-{n}-{r}"
                cmd = [
                    sys.executable, "-m", "vitrina", "train", str(data), "--arch", args.arch,
                    "--mode", args.mode, "--epochs", str(args.epochs),
                    "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                    "--augment", "none", "--patience", "0", "--out", str(out),
                    "--workers", "0", "--device", args.device, "--json",
                ]  # fmt: skip
                if n > 1:
                    cmd += ["--nproc", str(n)]
                res = _watched_run(cmd, out, env)
                results[n].append(res)
                best = max(x.get("val_accuracy", 0.0) for x in res["records"])
                print(
                    f"round {r + 1}, {n} process(es): {res['wall']:.1f} s, best val accuracy "
                    f"{best:.4f}, load {_load()}",
                    flush=True,
                )
    target = min(
        max(x.get("val_accuracy", 0.0) for x in res["records"])
        for rs in results.values()
        for res in rs
    )
    print(f"\nload average after: {_load()}")
    print(
        f"{args.arch} {args.mode}, global batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.rounds} rounds; time to validation accuracy >= {target:.4f} (reached by all)"
    )
    print(f"{'processes':>9} {'samples/s':>10} {'s/epoch':>8} {'to target s':>12} {'wall s':>7}")
    rows: dict[int, dict[str, float]] = {}
    for n, runs in results.items():
        ips = statistics.median(
            statistics.median(x["images_per_s"] for x in res["records"]) for res in runs
        )
        per_epoch = statistics.median(
            statistics.median(b - a for a, b in zip(res["stamps"], res["stamps"][1:], strict=False))
            if len(res["stamps"]) > 1
            else res["stamps"][0]
            for res in runs
        )
        to_target = statistics.median(
            next(
                t
                for t, x in zip(res["stamps"], res["records"], strict=True)
                if x.get("val_accuracy", 0.0) >= target
            )
            for res in runs
        )
        wall = statistics.median(res["wall"] for res in runs)
        rows[n] = {"ips": ips, "epoch": per_epoch, "target": to_target, "wall": wall}
        print(f"{n:>9} {ips:>10.1f} {per_epoch:>8.2f} {to_target:>12.1f} {wall:>7.1f}")
    base = rows[nprocs[0]]
    for n in nprocs[1:]:
        print(
            f"{n} vs {nprocs[0]} process(es): samples/s {rows[n]['ips'] / base['ips']:.2f}x, "
            f"time to the same accuracy {rows[n]['target']:.1f} s vs {base['target']:.1f} s "
            f"({base['target'] / rows[n]['target']:.2f}x the speed, start-up included)"
        )


def _per_s(fn: Any, items: list[Any], repeats: int = 3) -> float:
    """Items per CPU-second of ``fn`` over ``items`` (one thread: per core), the median of
    ``repeats`` passes. CPU time, not wall time: on a shared machine a thread waits for the
    core as long as the neighbours keep it, and that wait is not this work's cost."""
    rates = []
    for _ in range(repeats):
        t0 = time.process_time()
        for it in items:
            fn(it)
        rates.append(len(items) / max(time.process_time() - t0, 1e-9))
    return statistics.median(rates)


def _cpu_s(fn: Any) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _photo(path: Path, size: tuple[int, int]) -> Path:
    """A real photo (scikit-image's astronaut) scaled to ``size``, JPEG quality 90."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def rates_main(argv: list[str]) -> None:
    """Per-core rates of each stage of a batch job (one thread each), for docs/scaling.md."""
    ap = argparse.ArgumentParser(prog="scale.py rates", description=rates_main.__doc__)
    ap.add_argument("--data", default=str((DEFAULT_DATA / "cats_dogs").resolve()))
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--vectors", type=int, default=20_000)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss
    import numpy as np
    import torch

    from vitrina.data import eval_transform
    from vitrina.io import read_image
    from vitrina.models import create

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    print(f"machine: {machine()}")
    print(
        f"CPU flags: {cpu_flags()}; load average before: {_load()}; one thread per stage, "
        "rates per CPU-second (process time), so the neighbours' load does not count"
    )
    model = create("efficientnet_lite0", weights=None, num_classes=2).eval()
    pre = model.preprocess
    tf = eval_transform(pre)
    side = min(pre.input_size)

    def decode(path: Path) -> Any:
        return tf(read_image(path, min_side=side))

    with tempfile.TemporaryDirectory(prefix="vitrina-rates-") as tmp:
        work = Path(tmp)
        photos = sorted(
            p for p in Path(args.data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        photos = photos[: args.photos]
        print(f"decode + resize + normalise to {side}px, photos/s per core:")
        if photos:
            print(f"  {args.data} ({len(photos)} photos): {_per_s(decode, photos):.1f}")
        for w, h in ((1920, 1080), (4000, 3000)):
            one = _photo(work / f"{w}x{h}.jpg", (w, h))
            n = 40 if w < 3000 else 15
            print(f"  {w}x{h} JPEG ({w * h / 1e6:.1f} MP): {_per_s(decode, [one] * n):.1f}")
        x = torch.randn(32, pre.channels, *pre.input_size)
        with torch.inference_mode():
            model(x)
            t = _per_s(lambda _: model(x), [0, 1], repeats=3) * 32
        print(f"model: EfficientNet-Lite0 eager fp32, batch 32: {t:.1f} photos/s per core")
        # writes: a Parquet shard of (path, 1,280-d vector, score); a placed copy (sort)
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(0)
        d, n = 1280, 10_000
        vecs = rng.standard_normal((n, d), dtype=np.float32)
        table = pa.table(
            {
                "path": [f"/photos/{i:08d}.jpg" for i in range(n)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), d),
                "score": np.ones(n, dtype=np.float32),
            }
        )
        dt = _cpu_s(lambda: pq.write_table(table, work / "shard.parquet"))
        print(
            f"writes: Parquet shard of {n:,} 1,280-d fp32 vectors: {n / dt:,.0f} vectors/s "
            f"({(work / 'shard.parquet').stat().st_size / n:,.0f} bytes/vector on disk)"
        )
        if photos:
            import shutil

            def place(p: Path) -> None:
                dest = work / "placed" / p.name
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(p, dest)
                with open(dest, "rb+") as f:
                    os.fsync(f.fileno())

            t0 = time.perf_counter()  # wall time: fsync waits for the disk, not the CPU
            for ph in photos:
                place(ph)
            wall = time.perf_counter() - t0
            print(
                f"writes: photo copied + fsynced (sort's placing), wall: {len(photos) / wall:.0f} "
                "photos/s per writer"
            )
        # index build, one thread: clustered unit vectors like real embeddings
        m = args.vectors
        centres = rng.standard_normal((200, d), dtype=np.float32)
        xb = centres[rng.integers(0, 200, m)] + 0.5 * rng.standard_normal((m, d), dtype=np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(xb)
        print(
            f"index: HNSW32 (efConstruction 40) add, {m:,} vectors: {m / (time.perf_counter() - t0):,.0f} vectors/s per core"
        )
        nlist, pq_m = 256, 64
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQ(quant, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = xb[: 40 * nlist]  # faiss asks for >= 39 points per list
        train = _cpu_s(lambda: ivf.train(sample))
        add = _cpu_s(lambda: ivf.add(xb))
        print(
            f"index: IVF{nlist},PQ{pq_m}x8 train on {len(sample):,}: {train:.1f} CPU-s; add: {m / add:,.0f} vectors/s per core "
            f"({pq_m} bytes/vector of codes + 8 of id vs {d * 4:,} fp32)"
        )
        flat = faiss.IndexFlatIP(d)
        dt = _cpu_s(lambda: flat.add(xb))
        print(f"index: flat add: {m / dt:,.0f} vectors/s per core")
    print(f"load average after: {_load()}")


def _ray_run(args: argparse.Namespace) -> None:
    import ray

    import vitrina
    from vitrina.classify.sort import sort_folder
    from vitrina.data import scan_folder
    from vitrina.embed.files import embed_files
    from vitrina.scale import RayOptions, ray_embed_files, ray_sort_folder

    root = data_dir("cats_dogs", args.data)
    scan = scan_folder(root)
    paths = [s.path for s in scan.samples]
    step = max(1, len(paths) // args.limit)
    paths = paths[::step][: args.limit]
    print(f"machine: {machine()}; CPU flags: {cpu_flags()}")
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"photos: {len(paths)} from {root}; backend {args.backend}; rounds {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("VITRINA_CACHE", str(tmp / "cache"))
        if args.model:
            run = Path(args.model)
        else:
            by_class = paths_by_class(scan)
            labelled = link_subset([p for items in by_class for p in items[:10]], tmp / "few")
            run = vitrina.train(
                str(labelled),
                arch="efficientnet_lite0",
                mode="probe",
                out=str(tmp / "run"),
                epochs=20,
            ).run_dir
        photos = tmp / "photos"
        photos.mkdir()
        for p in paths:
            (photos / f"{p.parent.name}-{p.name}").symlink_to(p.resolve())
        n = len(paths)
        ray.init(
            num_cpus=max(2, os.cpu_count() or 2),
            include_dashboard=False,
            object_store_memory=args.object_store_mb * 2**20,
            log_to_driver=False,
        )
        kw = {"backend": args.backend, "batch_size": args.batch_size}
        sort_times: dict[str, list[float]] = {"single process": [], "ray 1": [], "ray 2": []}
        embed_times: dict[str, list[float]] = {"single process": [], "ray 1": [], "ray 2": []}
        same = []
        # the page cache and the ONNX/OpenVINO exports, paid once before the timed rounds
        sort_folder(photos, run, tmp / "warm", **kw)
        for r in range(args.rounds):
            for name in sort_times:
                out = tmp / f"sort-{name.replace(' ', '')}-{r}"
                t = time.perf_counter()
                if name == "single process":
                    s = sort_folder(photos, run, out, **kw)
                else:
                    opts = RayOptions(workers=int(name[-1]), block_rows=args.block_rows)
                    s = ray_sort_folder(photos, run, out, ray=opts, **kw)
                sort_times[name].append(n / (time.perf_counter() - t))
                print(
                    f"  round {r + 1} sort {name}: {sort_times[name][-1]:.2f} photos/s", flush=True
                )
                if r == 0:
                    print(f"  sort {name}: {s.counts} ({s.backend})")
                    same.append(s.counts)
            for name in embed_times:
                out = tmp / f"embed-{name.replace(' ', '')}-{r}.npy"
                t = time.perf_counter()
                if name == "single process":
                    embed_files(args.embed_model, [photos], out, **kw)
                else:
                    opts = RayOptions(workers=int(name[-1]), block_rows=args.block_rows)
                    embed_files_run = ray_embed_files(
                        args.embed_model, [photos], out, ray=opts, **kw
                    )
                    assert len(embed_files_run.result.paths) == n
                embed_times[name].append(n / (time.perf_counter() - t))
                print(
                    f"  round {r + 1} embed {name}: {embed_times[name][-1]:.2f} photos/s",
                    flush=True,
                )
        ray.shutdown()
        print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(f"sort placements agree across paths: {all(c == same[0] for c in same)}")
        for what, times in (("sort", sort_times), ("embed", embed_times)):
            base = statistics.median(times["single process"])
            print(f"{what} ({n} photos, median of {args.rounds}; photos/s, x single process):")
            for name, values in times.items():
                med = statistics.median(values)
                runs = ", ".join(f"{v:.1f}" for v in values)
                print(f"  {name:15s} {med:7.1f} photos/s  x{med / base:.2f}   [{runs}]")


def ray_main(argv: list[str]) -> None:
    """``ray``: sort and embed on Ray Data (1 and 2 actors) against one process."""
    r = argparse.ArgumentParser(prog="scale.py ray", description=ray_main.__doc__)
    r.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    r.add_argument("--limit", type=int, default=200, help="photos per run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--model", help="a classifier run folder (default: train a probe here)")
    r.add_argument("--embed-model", default="efficientnet_lite0")
    r.add_argument("--backend", default="eager")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--block-rows", type=int, default=None, help="photos per Ray block/shard")
    r.add_argument("--object-store-mb", type=int, default=200)
    _ray_run(r.parse_args(argv))


COMMANDS = {"torchrun": torchrun_main, "rates": rates_main, "ray": ray_main}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python benchmarks/scale.py {{{','.join(COMMANDS)}}} [options]")
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
