"""More than one process: `vitrina sort` and `vitrina embed` on Ray Data against the
single-process path, in the same run.

    python benchmarks/scale.py ray [--data ../shared/data/cats_dogs] [--limit 200] [--rounds 3]

Section ``ray`` (issue 20): photos/s of ``sort_folder`` and ``embed_files`` in this process
(the engine's own decode threads, every core) against ``ray_sort_folder`` /
``ray_embed_files`` on a local Ray with 1 and 2 actors (``RayOptions(workers=n)``), each
actor one engine with ``cpus_per_worker`` threads. Each Ray figure is the wall time of the
whole call: actors start (import torch and vitrina, load the model, choose the backend),
run, and the driver writes the shards and places the photos / writes the vectors. Medians of
``--rounds`` interleaved rounds; ratios against the single-process path of the same rounds.

The model: a cats/dogs probe on EfficientNet-Lite0 trained here on 10 photos per class (or
``--model RUN``) for sort, EfficientNet-Lite0's ImageNet embedding for embed. ``--backend``
is fixed for every path (default ``eager``) so the paths differ only in how they run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_flags, data_dir, link_subset, machine


def _ray_section(args: argparse.Namespace) -> None:
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
            by_class = [
                [s.path for s in scan.samples if s.label == c] for c in range(len(scan.classes))
            ]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="section", required=True)
    r = sub.add_parser("ray", help="sort and embed on Ray Data (1 and 2 actors) vs one process")
    r.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    r.add_argument("--limit", type=int, default=200, help="photos per run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--model", help="a classifier run folder (default: train a probe here)")
    r.add_argument("--embed-model", default="efficientnet_lite0")
    r.add_argument("--backend", default="eager")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--block-rows", type=int, default=None, help="photos per Ray block/shard")
    r.add_argument("--object-store-mb", type=int, default=200)
    r.set_defaults(run=_ray_section)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
