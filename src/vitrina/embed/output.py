"""Writing embeddings: ``.npy`` (+ ``.csv`` of index,path beside it) or ``.parquet``
(a ``path`` column and a fixed-size ``vector`` list column). Atomic, never overwriting."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.embed.core import EmbedResult
from vitrina.errors import VitrinaError, require
from vitrina.io import atomic_write_bytes, atomic_writer

__all__ = ["FORMATS", "output_files", "read_vectors", "write_vectors"]

FORMATS = (".npy", ".parquet")


def output_files(out: str | Path) -> list[Path]:
    """The files ``write_vectors(out)`` creates. Called before any work, so a ``.parquet``
    without pyarrow (the ``parquet`` extra) fails at the start, not after the embedding."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        return [out, out.with_suffix(".csv")]
    if suffix == ".parquet":
        require("pyarrow.parquet", "parquet", "Parquet output")
        return [out]
    raise VitrinaError(
        f"{out}: unknown output format {out.suffix or '(none)'!r}; use .npy or .parquet"
    )


def write_vectors(
    result: EmbedResult, out: str | Path, *, meta: dict[str, Any] | None = None, force: bool = False
) -> list[Path]:
    """Write ``result`` to ``out`` (``.npy`` + ``.csv``, or ``.parquet``); return the files.

    Existing files are refused unless ``force``; ``meta`` (e.g. the spec and fingerprint)
    goes into the Parquet schema metadata."""
    files = output_files(out)
    if not force:
        for f in files:
            if f.exists():
                raise VitrinaError(f"{f}: file exists; choose another --out (nothing was written)")
    files[0].parent.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(result.vectors, dtype=np.float32)
    if files[0].suffix.lower() == ".npy":
        buf = io.BytesIO()
        np.save(buf, vectors, allow_pickle=False)
        atomic_write_bytes(files[0], buf.getvalue())
        with atomic_writer(files[1], "w") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["index", "path"])
            for i, p in enumerate(result.paths):
                w.writerow([i, str(p)])
        return files
    pa = require("pyarrow", "parquet", "Parquet output")
    pq = require("pyarrow.parquet", "parquet", "Parquet files")

    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    table = pa.table(
        {"path": pa.array([str(p) for p in result.paths], pa.string()), "vector": column}
    )
    if meta:
        table = table.replace_schema_metadata({"vitrina": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(files[0], sink.getvalue().to_pybytes())
    return files


def read_vectors(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(vectors, paths) from a file written by :func:`write_vectors`."""
    path = Path(path)
    if not path.is_file():
        raise VitrinaError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        vectors = np.load(path, allow_pickle=False)
        side = path.with_suffix(".csv")
        if not side.is_file():
            raise VitrinaError(f"{side}: missing (the index,path list written next to {path.name})")
        with side.open(newline="") as fh:
            paths = [row["path"] for row in csv.DictReader(fh)]
        return vectors, paths
    pq = require("pyarrow.parquet", "parquet", "Parquet files")

    t = pq.read_table(path)
    vec = t.column("vector").combine_chunks()
    dim = vec.type.list_size if hasattr(vec.type, "list_size") else 0
    flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(t), dim), [str(p) for p in t.column("path").to_pylist()]
