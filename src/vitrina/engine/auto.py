"""The ``auto`` backend: the fastest backend that keeps accuracy, measured for this model on
this machine.

On the first batch of each output, ``auto`` runs eager fp32 and every candidate this machine
and model can use on that batch, times them (warm-up, then the median of a few runs), and
keeps the fastest candidate whose outputs are within its stated tolerance
(:data:`vitrina.engine.backends.TOLERANCES`) of eager fp32. The decision is cached per model
weights and machine in ``$VITRINA_CACHE/auto``, so later runs skip the trial.

Candidates: ``onnx`` (CPU, when ONNX Runtime is installed); ``bf16`` only where bf16 matrix
units exist (AMX / AVX-512 BF16, bf16 GPUs: elsewhere bf16 is emulated and several times
slower); ``int8`` only when a calibrated model exists, i.e. a run folder optimized with
``vitrina optimize`` whose int8 variant met the int8 tolerance on the evaluation images, or
calibration images passed as ``calib=``. ``eager`` is always the fallback.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from vitrina.engine.backends import (
    BACKENDS,
    TOLERANCES,
    Backend,
    Tolerance,
    bf16_supported,
    compare_outputs,
)
from vitrina.engine.onnx import _fingerprint, onnx_available
from vitrina.engine.timing import machine_key
from vitrina.engine.variants import run_dir_of, variant_file
from vitrina.io import cache_dir as io_cache_dir
from vitrina.models import VitrinaModel

__all__ = ["AutoBackend", "auto_candidates", "int8_evidence"]

log = logging.getLogger("vitrina.engine")
_TIMED_RUNS = 3


def int8_evidence(model: VitrinaModel, output: str, options: dict[str, Any]) -> str | None:
    """Why int8 may be tried: ``"report"`` (a run variant whose recorded evaluation met the
    int8 tolerance), ``"batch"`` (a calibrated model with no evaluation: the first batch must
    meet the tolerance on its own), or ``None`` (int8 is not a candidate)."""
    run = run_dir_of(model)
    if run is not None and variant_file(run, "int8", output).is_file():
        try:
            report = json.loads((run / "variants" / "report.json").read_text())
            agreement = float(report["variants"]["int8"]["top1_agreement"])
        except (OSError, ValueError, KeyError, TypeError):
            return "batch"
        return "report" if agreement >= TOLERANCES["int8"].top1 else None
    return "batch" if options.get("calib") is not None else None


def auto_candidates(
    model: VitrinaModel, device: torch.device, output: str, options: dict[str, Any]
) -> list[str]:
    """Backends ``auto`` tries besides eager, for this model, device and output. A model
    that cannot be exported (``export_refusal``: features computed by OpenCV) stays on eager."""
    names: list[str] = []
    if getattr(model, "export_refusal", None):
        return names
    if device.type == "cpu" and onnx_available():
        names.append("onnx")
        if int8_evidence(model, output, options):
            names.append("int8")
    if bf16_supported(device):
        names.append("bf16")
    return [n for n in names if BACKENDS.get(n).supports(output)]


def _time(backend: Backend, x: torch.Tensor, output: str) -> tuple[torch.Tensor, float]:
    """Outputs and images/s (median of a few runs after a warm-up)."""
    y = backend(x, output=output)  # warm-up (and export / session creation)
    times = []
    for _ in range(_TIMED_RUNS):
        t0 = time.perf_counter()
        backend(x, output=output)
        times.append(time.perf_counter() - t0)
    return y, len(x) / max(statistics.median(times), 1e-9)


@BACKENDS.register("auto")
class AutoBackend(Backend):
    """Delegates to the backend chosen on the first batch (see the module docstring)."""

    name = "auto"

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
        self._chosen: dict[str, Backend] = {}
        self.decisions: dict[str, dict[str, Any]] = {}

    @property
    def resolved(self) -> str:
        """The backend in use (``auto`` until the first batch)."""
        names = {d["chosen"] for d in self.decisions.values()}
        return names.pop() if len(names) == 1 else "auto"

    def _build(self, name: str) -> Backend:
        return BACKENDS.get(name)(self.model, self.device, self.threads, **self.options)

    def _cache_file(self, output: str) -> Path:
        return (
            io_cache_dir("auto")
            / f"{self.model.arch.replace('/', '_')}-{_fingerprint(self.model, output)}.json"
        )

    def _cached(self, output: str, candidates: list[str]) -> dict[str, Any] | None:
        try:
            d = json.loads(self._cache_file(output).read_text())
        except (OSError, ValueError):
            return None
        if d.get("machine") != machine_key() or d.get("candidates") != candidates:
            return None
        return d

    def _decide(self, x: torch.Tensor, output: str) -> dict[str, Any]:
        candidates = auto_candidates(self.model, self.device, output, self.options)
        if not candidates:  # nothing to compare: no trial, nothing to cache
            return {"chosen": "eager", "candidates": [], "trials": {}}
        cached = self._cached(output, candidates)
        if cached is not None:
            return cached
        eager = BACKENDS.get("eager")(self.model, self.device, self.threads)
        ref, eager_speed = _time(eager, x, output)
        trials: dict[str, dict[str, Any]] = {"eager": {"images_per_s": eager_speed, "ok": True}}
        for name in candidates:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # their own first-batch notes
                    y, speed = _time(self._build(name), x, output)
            except Exception as e:  # a candidate that fails is simply not chosen
                trials[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                continue
            report = compare_outputs(ref, y, output)
            tol = TOLERANCES[name]
            if name == "int8" and int8_evidence(self.model, output, self.options) == "report":
                # Top-1 agreement was measured on the whole evaluation folder; one batch of a
                # few images cannot repeat that, it only guards against a broken file.
                tol = Tolerance(top1=0.0, rel=tol.rel)
            trials[name] = {"images_per_s": speed, "ok": tol.ok(report), **report}
        ok = {n: t["images_per_s"] for n, t in trials.items() if t.get("ok")}
        chosen = max(ok, key=ok.__getitem__)
        decision = {
            "chosen": chosen,
            "machine": machine_key(),
            "candidates": candidates,
            "batch": len(x),
            "trials": trials,
        }
        from vitrina.io import atomic_write_text

        try:
            path = self._cache_file(output)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(decision, indent=2) + "\n")
        except OSError:  # a read-only cache only costs the trial next time
            pass
        return decision

    def describe(self) -> str:
        """One line: what was chosen and the measured speeds (after the first batch)."""
        if not self.decisions:
            return "auto (not decided yet)"
        parts = []
        for output, d in self.decisions.items():
            speeds = ", ".join(
                f"{n} {t['images_per_s']:.0f}" + ("" if t.get("ok") else " (outside tolerance)")
                for n, t in d["trials"].items()
                if "images_per_s" in t
            )
            why = f"img/s: {speeds}" if speeds else "no other backend to try on this machine"
            parts.append(f"auto -> {d['chosen']} for {output} ({why})")
        return "; ".join(parts)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        if output not in self._chosen:
            decision = self._decide(x, output)
            self.decisions[output] = decision
            self._chosen[output] = self._build(decision["chosen"])
            log.info(self.describe())
        return self._chosen[output](x, output=output)
