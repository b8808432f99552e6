"""The zoo's measurements: each model timed on this machine through the engine's backends.

:func:`measure` gives latency (batch 1) and throughput (batch 32) per backend; results are
cached per machine under ``$VITRINA_CACHE/zoo/measure-<machine>.json`` and reused without
building the model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vitrina.engine import BACKENDS, Engine, Logits, available_cores
from vitrina.engine.timing import cpu_name, time_call
from vitrina.engine.timing import machine_key as engine_machine_key
from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel
from vitrina.models.registry import resolve_name
from vitrina.zoo import catalogue
from vitrina.zoo.catalogue import Timing, _one_line, _read_json, _slug, _write_json, cache_dir

__all__ = ["is_measured", "machine_key", "measure", "measurement_backends"]

_TASK = Logits()  # the zoo times the classifier's forward pass


def machine_key() -> str:
    """CPU model, cores, GPU and runtime versions (``vitrina.engine.timing.machine_key``) as a
    file-name slug: measurements are only reused on the same."""
    return _slug(engine_machine_key())


def _measure_path() -> Path:
    return cache_dir() / f"measure-{machine_key()}.json"


def _cell_key(source: str, arch: str, backend: str, batch: int, threads: int) -> str:
    return f"{source}/{arch}|{backend}|batch{batch}|threads{threads}"


def _valid_cell(c: Any) -> bool:
    return (
        isinstance(c, dict)
        and isinstance(c.get("median_s"), int | float)
        and c["median_s"] > 0
        and isinstance(c.get("runs"), int)
        and c["runs"] >= 1
    )


def _read_cells() -> dict[str, Any]:
    data = _read_json(_measure_path()) or {}
    cells = data.get("cells")
    return cells if isinstance(cells, dict) else {}


def _store_cell(key: str, cell: dict[str, Any]) -> None:
    """Merge one measurement into the machine's file (re-read first: others may write too)."""
    cells = _read_cells()
    cells[key] = cell
    _write_json(
        _measure_path(),
        {"machine": {"cpu": cpu_name(), "cores": available_cores(), "torch": torch.__version__}}
        | {"cells": cells},
    )


def _resolve_threads(threads: int | None, name: str, source: str, arch: str) -> int:
    """``threads``, or by default every core, but one for nets under 1M parameters: their
    OpenMP threads only spin against each other (the engine's rule, see ``torch_threads``)."""
    if threads is None:
        tiny = catalogue._static(name, source, arch)["params"] < 1_000_000
        return 1 if tiny else available_cores()
    if isinstance(threads, bool) or int(threads) < 1:
        raise VitrinaError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def is_measured(
    name: str,
    backends: Sequence[str] = ("eager", "bf16"),
    *,
    threads: int | None = None,
    latency_batch: int = 1,
    throughput_batch: int = 32,
) -> bool:
    """Whether :func:`measure` with these arguments is answered from the cache."""
    source, arch = resolve_name(name)
    n = _resolve_threads(threads, name, source, arch)
    cells = _read_cells()
    return all(
        _valid_cell(cells.get(_cell_key(source, arch, b, batch, n)))
        for b in backends
        if b in _backends_of(name)
        for batch in (latency_batch, throughput_batch)
    )


def _backends_of(name: str) -> tuple[str, ...]:
    """The backends model ``name`` runs on (``backends`` of a classic model), else all."""
    from vitrina.models.classic import FITTED_ARCHS, ClassicModel

    if name.removeprefix("vitrina/") in FITTED_ARCHS:
        return ClassicModel.backends
    return tuple(BACKENDS.names())


def measurement_backends(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """The backends to time for the names asked (``auto`` stands for its first guess on this
    CPU; duplicates dropped, order kept) and the notes a user should read before waiting for
    the timings (bf16 is emulated, and many times slower, on CPUs without bf16 units)."""
    from vitrina.engine import bf16_supported, resolve_backend

    asked = [n.strip() for n in names if n.strip()]
    if not asked:
        raise VitrinaError("no backends given (e.g. eager,bf16)")
    cpu = torch.device("cpu")
    backends = list(dict.fromkeys(resolve_backend(b, cpu) for b in asked))
    notes = []
    if "bf16" in backends and not bf16_supported(cpu):
        notes.append(
            "this CPU has no bf16 matrix units (AMX / AVX-512-BF16): bf16 is emulated and many "
            "times slower than fp32 here"
        )
    return backends, notes


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure(
    name: str,
    backends: Iterable[str] = ("eager", "bf16"),
    *,
    threads: int | None = None,
    latency_batch: int = 1,
    throughput_batch: int = 32,
    min_time: float = 0.5,
    max_time: float = 3.0,
    refresh: bool = False,
) -> dict[str, Timing]:
    """Time model ``name`` (random weights) on this CPU with each backend.

    Latency: median time of a batch of ``latency_batch`` images; throughput: images/s from the
    median time of a batch of ``throughput_batch``; both at the model's native input size on a
    random normalized batch, through ``vitrina.engine.BACKENDS``. Each cell (backend x batch)
    gets a warm-up run, then timed runs until >= 3 runs and >= ``min_time`` seconds, stopping
    once ``max_time`` is exceeded (so a slow cell, e.g. VGG-16 in emulated bf16, gets one
    timed run). ``threads``: torch threads (default: every core this process may use, one
    for nets under 1M parameters).

    Results are cached per machine (:func:`machine_key`) in ``cache_dir()/measure-*.json``
    and reused without building the model; ``refresh`` measures again.
    """
    backends = list(dict.fromkeys(backends))
    for b in backends:
        BACKENDS.get(b)  # unknown backend: UnknownNameError with suggestions
    if min(latency_batch, throughput_batch) < 1:
        raise VitrinaError("batch sizes must be >= 1")
    if min_time < 0 or max_time <= 0:
        raise VitrinaError("min_time must be >= 0 and max_time > 0")
    source, arch = resolve_name(name)
    n_threads = _resolve_threads(threads, name, source, arch)
    cells = {} if refresh else _read_cells()
    model: VitrinaModel | None = None
    out: dict[str, Timing] = {}
    for backend in backends:
        if backend not in _backends_of(name):
            continue  # a classic model (OpenCV features) has no ONNX backends: no cell
        results: dict[int, dict[str, Any]] = {}
        runner = None
        for batch in dict.fromkeys((latency_batch, throughput_batch)):
            key = _cell_key(source, arch, backend, batch, n_threads)
            cell = cells.get(key)
            if not _valid_cell(cell):
                if model is None:
                    try:
                        model = catalogue._build(name, torch.device("cpu"))
                    except VitrinaError:
                        raise
                    except Exception as e:
                        raise VitrinaError(f"{name}: cannot be built ({_one_line(e)})") from e
                h, w = model.preprocess.input_size
                x = torch.randn(
                    batch,
                    model.preprocess.channels,
                    h,
                    w,
                    generator=torch.Generator().manual_seed(0),
                )
                with _torch_threads(n_threads):
                    if runner is None:
                        runner = Engine(model, backend=backend, device="cpu", threads=n_threads)
                    t = time_call(
                        lambda r=runner, x=x: r.forward(_TASK, x),
                        min_time=min_time,
                        max_time=max_time,
                    )
                    median, runs = t.seconds, t.runs
                cell = {
                    "median_s": median,
                    "runs": runs,
                    "input_size": [h, w],
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                _store_cell(key, cell)
            assert cell is not None
            results[batch] = cell
        lat, thr = results[latency_batch], results[throughput_batch]
        out[backend] = Timing(
            backend=backend,
            latency_ms=1000.0 * lat["median_s"],
            latency_runs=int(lat["runs"]),
            throughput=throughput_batch / thr["median_s"],
            throughput_runs=int(thr["runs"]),
            threads=n_threads,
            latency_batch=latency_batch,
            throughput_batch=throughput_batch,
        )
    return out
