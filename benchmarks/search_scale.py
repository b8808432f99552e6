"""How vitrina's index scales, next to raw faiss with the same parameters, in one run.

N synthetic 1,280-d float32 vectors (a Gaussian mixture around 1,000 centres, L2-normalized,
generated in chunks), indexed by ``vitrina.Index`` (kind hnsw by default: what ``auto`` picks
above 50,000) and by a bare ``faiss.IndexHNSWFlat`` with the same M / efConstruction and the
efSearch vitrina tuned. For each: build time, RSS growth, single-query latency p50 / p99, and
recall@10 against exact search on fresh queries from the same mixture (not indexed).

    python benchmarks/search_scale.py --n 200000      # ~7 min on 2 cores
    python benchmarks/search_scale.py                 # 1,000,000: needs ~16 GB RAM
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vitrina.search import Index
from vitrina.search.index import HNSW_EF_CONSTRUCTION, HNSW_M, recall_at_k


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def mixture(n: int, dim: int, centres: np.ndarray, spread: float, seed: int, chunk: int = 50_000):
    """(n, dim) float32, generated chunk by chunk into one array (no float64 copy of it all)."""
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, len(centres), m)] + spread * rng.standard_normal(
            (m, dim), dtype=np.float32
        )
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(search, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    found = []
    times = []
    for i in range(len(queries)):
        t = time.perf_counter()
        ids = search(queries[i : i + 1])
        times.append(time.perf_counter() - t)
        found.append(ids)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), np.array(found)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument(
        "--spread", type=float, default=0.6, help="noise sd per dimension (centres ~ N(0,1))"
    )
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--kind", default="hnsw", choices=["hnsw", "ivf"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
    t = time.perf_counter()
    x = mixture(args.n, args.dim, centres, args.spread, args.seed + 1)
    q = mixture(args.queries, args.dim, centres, args.spread, args.seed + 2)
    print(
        f"generated {args.n:,} x {args.dim} vectors in {time.perf_counter() - t:.1f} s; "
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads"
    )
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)

    tmp = Path(tempfile.mkdtemp(prefix="vitrina-bench-"))
    try:
        # ---------------------------------------------------------------- vitrina
        gc.collect()
        r0 = rss_mb()
        t = time.perf_counter()
        idx = Index.create(tmp / "ix", dim=args.dim, metric="cosine", kind=args.kind)
        idx.add_vectors(x, [{"path": f"synthetic/{i:07d}"} for i in range(args.n)])
        v_build = time.perf_counter() - t
        gc.collect()
        v_rss = rss_mb() - r0
        info = idx.info()
        params = info["params"]
        disk = info["bytes_on_disk"] / 1e6

        def v_search(qq):
            hits = idx.search(qq, k=10)[0].hits
            return [h.id - 1 for h in hits]  # ids are 1-based row ids in insertion order

        v_p50, v_p99, v_found = latencies(v_search, q)
        v_recall = recall_at_k(v_found, truth)
        idx.close()
        idx = None
        gc.collect()

        # ---------------------------------------------------------------- raw faiss
        r0 = rss_mb()
        t = time.perf_counter()
        if args.kind == "hnsw":
            raw = faiss.IndexHNSWFlat(args.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            raw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            raw.add(x)
            raw.hnsw.efSearch = max(int(params["efSearch"]), 10)
        else:
            quant = faiss.IndexFlatIP(args.dim)
            raw = faiss.IndexIVFFlat(
                quant, args.dim, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT
            )
            sample = x[
                np.sort(
                    np.random.default_rng(0).choice(
                        args.n, min(args.n, params["nlist"] * 256), replace=False
                    )
                )
            ]
            raw.train(sample)
            raw.add(x)
            raw.nprobe = int(params["nprobe"])
        r_build = time.perf_counter() - t
        gc.collect()
        r_rss = rss_mb() - r0
        r_p50, r_p99, r_found = latencies(lambda qq: raw.search(qq, 10)[1][0], q)
        r_recall = recall_at_k(r_found, truth)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    knob = {
        k: v
        for k, v in params.items()
        if k in ("M", "efConstruction", "efSearch", "nlist", "nprobe")
    }
    print(f"\nN={args.n:,} dim={args.dim} kind={args.kind} {knob}")
    print(
        f"vitrina's own recall@10 (leave-one-out on stored vectors): {info['recall']['recall_at_10']:.3f}"
    )
    print(f"{'':10} {'build s':>9} {'RSS MB':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    print(f"{'vitrina':10} {v_build:9.1f} {v_rss:8.0f} {v_p50:8.3f} {v_p99:8.3f} {v_recall:10.3f}")
    print(f"{'faiss':10} {r_build:9.1f} {r_rss:8.0f} {r_p50:8.3f} {r_p99:8.3f} {r_recall:10.3f}")
    print(
        f"{'ratio':10} {v_build / r_build:9.2f} {v_rss / max(r_rss, 1):8.2f} {v_p50 / r_p50:8.2f} {v_p99 / r_p99:8.2f}"
    )
    print(
        f"vitrina on disk: {disk:.0f} MB (meta.sqlite keeps the raw vectors; vectors.faiss the graph + a copy)"
    )
    ok = v_p50 < 5 and v_recall >= 0.95 and v_p50 / r_p50 < 1.2
    print(f"target p50 < 5 ms at recall@10 >= 0.95, overhead < 20%: {'met' if ok else 'MISSED'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "n": args.n,
                    "dim": args.dim,
                    "kind": args.kind,
                    "params": knob,
                    "vitrina": {
                        "build_s": v_build,
                        "rss_mb": v_rss,
                        "p50_ms": v_p50,
                        "p99_ms": v_p99,
                        "recall10": v_recall,
                        "disk_mb": disk,
                    },
                    "faiss": {
                        "build_s": r_build,
                        "rss_mb": r_rss,
                        "p50_ms": r_p50,
                        "p99_ms": r_p99,
                        "recall10": r_recall,
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
