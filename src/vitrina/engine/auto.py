"""The ``auto`` backend: the fastest backend that keeps accuracy, measured for this model on
this machine, under the conditions of the run.

1. **Accuracy and isolated speed** (first batch of each output): ``auto`` runs eager fp32 and
   every candidate this machine and model can use on that batch with the run's thread
   budget, times them (warm-up, then the median of a few runs) and drops every candidate
   outside its stated tolerance (:data:`vitrina.engine.backends.TOLERANCES`) of eager fp32.
   The fastest that remains is used.
2. **Speed in the running pipeline**: when the engine runs a pipeline (decode threads or
   processes beside the model, the consumer copying files), the isolated figure is not the
   figure that counts — a backend whose threads spin fights the decoders for the cores, a
   runtime that scales less well leaves them more. So the candidates within
   ``PIPELINE_SHORTLIST`` of the fastest are run in turn on the pipeline's own batches
   (interleaved rounds; each batch's cost is the model stage's cycle, waiting for decoded
   input included, see :meth:`vitrina.engine.Engine.run_batches`) and ``auto`` switches once,
   to the one with the best median images/s. Every batch of the check is a real result
   (each candidate is within tolerance), so the check costs no extra work.

The decision (both measurements, the pipeline's conditions: decode threads or processes,
their number, the cores) is cached per model weights, output and machine in
``$VITRINA_CACHE/auto``: a later run under the same conditions uses it with no trial at all
(and the chosen backend skips its own first-batch check: the trial made it).

Candidates: ``onnx`` and ``openvino`` (CPU, when installed); ``bf16`` and ``openvino-bf16``
only where bf16 matrix units exist (AMX / AVX-512 BF16, bf16 GPUs: elsewhere bf16 is
emulated and several times slower); ``int8`` and ``openvino-int8`` only when a calibrated
model exists, i.e. a run folder optimized with ``vitrina optimize`` whose variant met the
int8 tolerance on the evaluation images, or calibration images passed as ``calib=``.
``eager`` is always the fallback.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitrina.engine.backends import (
    BACKENDS,
    TOLERANCES,
    Backend,
    Tolerance,
    as_tensor,
    bf16_supported,
    compare_outputs,
)
from vitrina.engine.onnx import _fingerprint, onnx_available
from vitrina.engine.timing import machine_key
from vitrina.engine.variants import run_dir_of, variant_file
from vitrina.io import cache_dir as io_cache_dir

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel

__all__ = ["PIPELINE_SHORTLIST", "AutoBackend", "auto_candidates", "int8_evidence"]

log = logging.getLogger("vitrina.engine")
_TIMED_RUNS = 3
#: Candidates whose isolated speed is at least this share of the fastest are re-measured in
#: the running pipeline (at most ``_PIPELINE_MAX`` of them).
PIPELINE_SHORTLIST = 0.5
_PIPELINE_MAX = 3
_PIPELINE_ROUNDS = 2  # interleaved rounds of the pipeline check
_PIPELINE_STREAK = 2  # consecutive batches per candidate and round (the first settles)
_INT8 = ("int8", "openvino-int8")
_FP32_RUNTIMES = ("onnx", "openvino")  # what a ``reduced_precision_refusal`` leaves


def int8_evidence(
    model: VitrinaModel, output: str, options: dict[str, Any], backend: str = "int8"
) -> str | None:
    """Why the int8 ``backend`` (``int8`` or ``openvino-int8``) may be tried: ``"report"``
    (a run variant whose recorded evaluation met the int8 tolerance), ``"batch"`` (a
    calibrated model with no evaluation: the first batch must meet the tolerance on its
    own), or ``None`` (not a candidate)."""
    run = run_dir_of(model)
    suffix = ".xml" if backend.startswith("openvino") else ".onnx"
    if run is not None and variant_file(run, backend, output, suffix).is_file():
        try:
            report = json.loads((run / "variants" / "report.json").read_text())
            agreement = float(report["variants"][backend]["top1_agreement"])
        except (OSError, ValueError, KeyError, TypeError):
            return "batch"
        return "report" if agreement >= TOLERANCES[backend].top1 else None
    return "batch" if options.get("calib") is not None else None


def auto_candidates(
    model: VitrinaModel, device: torch.device, output: str, options: dict[str, Any]
) -> list[str]:
    """Backends ``auto`` tries besides eager, for this model, device and output. A model
    that cannot be exported (``export_refusal``: features computed by OpenCV) stays on eager;
    one whose outputs are compared against thresholds calibrated in fp32
    (``reduced_precision_refusal``: dlib's face descriptor) gets the fp32 runtimes only."""
    from vitrina.engine.openvino import openvino_available

    names: list[str] = []
    if getattr(model, "export_refusal", None):
        return names
    if device.type == "cpu" and onnx_available():
        names.append("onnx")
        if int8_evidence(model, output, options, "int8"):
            names.append("int8")
    if device.type == "cpu" and openvino_available():
        names.append("openvino")
        if int8_evidence(model, output, options, "openvino-int8"):
            names.append("openvino-int8")
    if bf16_supported(device):
        names.append("bf16")
        if device.type == "cpu" and openvino_available():
            names.append("openvino-bf16")
    if getattr(model, "reduced_precision_refusal", None):
        names = [n for n in names if n in _FP32_RUNTIMES]
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


class _PipelineCheck:
    """The interleaved schedule of the pipeline check and its measurements (one output)."""

    def __init__(self, names: list[str], conditions: dict[str, Any]) -> None:
        self.names = names
        self.conditions = conditions
        self.schedule = [
            n for _ in range(_PIPELINE_ROUNDS) for n in names for _ in range(_PIPELINE_STREAK)
        ]
        self.position = 0
        self.rates: dict[str, list[float]] = {n: [] for n in names}
        self.current: str | None = None
        self.previous: str | None = None

    @property
    def done(self) -> bool:
        return self.position >= len(self.schedule)

    def next_backend(self) -> str:
        self.previous, self.current = self.current, self.schedule[self.position]
        self.position += 1
        return self.current

    def record(self, inputs: int, seconds: float) -> None:
        # A batch right after a switch still carries the previous backend's queue state.
        if self.current is not None and self.current == self.previous and seconds > 0:
            self.rates[self.current].append(inputs / seconds)

    def result(self) -> dict[str, Any]:
        medians = {n: statistics.median(r) for n, r in self.rates.items() if r}
        return {
            "conditions": self.conditions,
            "images_per_s": medians,
            "batches": {n: len(r) for n, r in self.rates.items()},
            "chosen": max(medians, key=medians.__getitem__) if medians else None,
        }


@BACKENDS.register("auto")
class AutoBackend(Backend):
    """Delegates to the backend chosen by measurement (see the module docstring)."""

    name = "auto"
    takes_arrays = True  # handed on to the backend chosen (PyTorch ones convert them)

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
        self._chosen: dict[str, Backend] = {}
        self._built: dict[str, Backend] = {}
        self._pipeline: dict[str, dict[str, Any]] = {}  # output -> conditions of this run
        self._checks: dict[str, _PipelineCheck] = {}
        self._last_check_backend: dict[str, str] = {}
        self._lock = threading.Lock()
        # One thread decides and builds backends; the others wait for it. Two request threads
        # of `vitrina serve` deciding at once moved the model between backends under each
        # other (`module.to` in one trial while the other ran it): a segfault in libtorch.
        self._decide_lock = threading.RLock()
        self.decisions: dict[str, dict[str, Any]] = {}

    @property
    def resolved(self) -> str:
        """The backend in use (``auto`` until the first batch)."""
        names = {d["chosen"] for d in self.decisions.values()}
        return names.pop() if len(names) == 1 else "auto"

    def _build(self, name: str) -> Backend:
        if name not in self._built:
            self._built[name] = BACKENDS.get(name)(
                self.model, self.device, self.threads, **self.options
            )
        return self._built[name]

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

    def _save(self, output: str, decision: dict[str, Any]) -> None:
        from vitrina.io import atomic_write_text

        try:
            path = self._cache_file(output)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(decision, indent=2) + "\n")
        except OSError:  # a read-only cache only costs the trial next time
            pass

    def _trial(self, x: torch.Tensor, output: str, candidates: list[str]) -> dict[str, Any]:
        """Step 1: accuracy against eager fp32 and isolated speed, on this batch."""
        x = as_tensor(x)  # every candidate answers in tensors, compared with eager's
        eager = BACKENDS.get("eager")(self.model, self.device, self.threads)
        ref, eager_speed = _time(eager, x, output)
        trials: dict[str, dict[str, Any]] = {"eager": {"images_per_s": eager_speed, "ok": True}}
        for name in candidates:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # their own first-batch notes
                    y, speed = _time(self._build(name), x, output)
            except Exception as e:  # a candidate that fails is simply not chosen
                self._built.pop(name, None)
                trials[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                continue
            report = compare_outputs(ref, y, output)
            tol = TOLERANCES[name]
            if name in _INT8 and int8_evidence(self.model, output, self.options, name) == "report":
                # Top-1 agreement was measured on the whole evaluation folder; one batch of a
                # few images cannot repeat that, it only guards against a broken file.
                tol = Tolerance(top1=0.0, rel=tol.rel)
            trials[name] = {"images_per_s": speed, "ok": tol.ok(report), **report}
        ok = {n: t["images_per_s"] for n, t in trials.items() if t.get("ok")}
        return {
            "chosen": max(ok, key=ok.__getitem__),
            "machine": machine_key(),
            "candidates": candidates,
            "batch": len(x),
            "threads": self.threads,
            "trials": trials,
        }

    def _decide(self, x: torch.Tensor, output: str) -> dict[str, Any]:
        candidates = auto_candidates(self.model, self.device, output, self.options)
        if not candidates:  # nothing to compare: no trial, nothing to cache
            return {"chosen": "eager", "candidates": [], "trials": {}}
        cached = self._cached(output, candidates)
        decision = cached if cached is not None else self._trial(x, output, candidates)
        conditions = self._pipeline.get(output)
        pipeline = decision.get("pipeline")
        if conditions is not None and pipeline and pipeline.get("conditions") == conditions:
            decision["chosen"] = pipeline["chosen"]  # measured under these very conditions
        elif conditions is not None:
            shortlist = _shortlist(decision["trials"])
            if len(shortlist) > 1:
                self._checks[output] = _PipelineCheck(shortlist, conditions)
        if cached is None:
            self._save(output, decision)
        return decision

    def start_pipeline(self, output: str, conditions: dict[str, Any]) -> None:
        """The engine runs ``output`` in a pipeline with these decode conditions: measure the
        shortlisted candidates on it (unless a decision for these conditions is cached)."""
        with self._lock:
            if output not in self._chosen:
                self._pipeline[output] = dict(conditions)

    def observe(self, output: str, inputs: int, seconds: float) -> None:
        """One pipeline batch of ``inputs`` took ``seconds`` (model stage cycle)."""
        check = self._checks.get(output)
        if check is None:
            return
        check.record(inputs, seconds)
        if check.done:
            self._finish_check(output, check)

    def _finish_check(self, output: str, check: _PipelineCheck) -> None:
        with self._decide_lock:
            self._finish_check_locked(output, check)

    def _finish_check_locked(self, output: str, check: _PipelineCheck) -> None:
        if self._checks.get(output) is not check:
            return  # another thread finished it
        result = check.result()
        del self._checks[output]
        if result["chosen"] is None:
            return
        decision = self.decisions[output]
        decision["pipeline"] = result
        decision["chosen"] = result["chosen"]
        self._chosen[output] = self._ready(result["chosen"], output)
        for name in list(self._built):  # free the sessions of the others
            if name not in {d["chosen"] for d in self.decisions.values()}:
                del self._built[name]
        self._save(output, decision)
        log.info(self.describe())

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
            why = f"img/s alone: {speeds}" if speeds else "no other backend to try here"
            pipe = d.get("pipeline")
            if pipe and pipe.get("images_per_s"):
                measured = ", ".join(f"{n} {v:.0f}" for n, v in pipe["images_per_s"].items())
                why += f"; in the pipeline: {measured}"
            elif output in self._checks:
                why += "; pipeline check running"
            parts.append(f"auto -> {d['chosen']} for {output} ({why})")
        return "; ".join(parts)

    def __call__(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        if output not in self._chosen:
            with self._decide_lock:
                if output not in self._chosen:  # not decided by another thread meanwhile
                    decision = self._decide(x, output)
                    self.decisions[output] = decision
                    self._chosen[output] = self._ready(decision["chosen"], output)
                    log.info(self.describe())
        check = self._checks.get(output)
        if check is not None and not check.done:
            with self._decide_lock:
                backend = self._ready(check.next_backend(), output)
            return backend(x, output=output)
        return self._chosen[output](x, output=output)

    def _ready(self, name: str, output: str) -> Backend:
        """The backend ``name``, told that the trial (made now or cached) already checked it
        against eager fp32 on this model, so it skips its own first-batch check."""
        backend = self._build(name)
        trial = self.decisions.get(output, {}).get("trials", {}).get(name, {})
        trust = getattr(backend, "trust", None)
        if trial.get("ok") and trust is not None:
            trust(output)
        return backend


def _shortlist(trials: dict[str, dict[str, Any]]) -> list[str]:
    """Candidates within tolerance and within :data:`PIPELINE_SHORTLIST` of the fastest."""
    ok = {n: t["images_per_s"] for n, t in trials.items() if t.get("ok")}
    if not ok:
        return []
    best = max(ok.values())
    ranked = sorted((n for n, v in ok.items() if v >= PIPELINE_SHORTLIST * best), key=ok.get)
    return list(reversed(ranked))[:_PIPELINE_MAX]
