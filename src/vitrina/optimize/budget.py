"""Prune as deep as an accuracy budget allows: ``vitrina optimize --prune-max-drop POINTS``.

How much a network can lose and still answer as the full one does depends on the network, the
photos and the task; a fixed target (half the FLOPs) can land within a point on one run and
three points out on another. With a budget, the pruned variant is built at the target, then
judged against fp32 on the ``--eval`` photos *and on copies of them made harder*
(:mod:`vitrina.data.shifts`: relit, shifted, rescaled -- a pruned network keeps the full one's
answers on photos like those it was distilled on and loses more where the subject moves or
shrinks). While the worst of those drops is larger than the budget, the target steps down by
:data:`PRUNE_STEP` and the variant is built again, until one holds or the target reaches
:data:`MIN_PRUNE`. The report lists every target tried with its drops.

Measured (``benchmarks/pruning.py``, EfficientNet-Lite0 cats/dogs probe, 200 training photos,
600 held out; AMD EPYC, flags avx2 avx512f avx512_vnni avx512_bf16): removing 50% of the
FLOPs loses 0.8-1.0 / 1.2-1.3 / 1.8 / 2.8-3.0 points (clean / relit / shifted / rescaled),
removing 30% loses -0.2 / 0.3 / 0.3 / 0.8: a budget of 1 point stops at 30%.

The drop is counted in points: accuracy x 100 for a classifier, retrieval mAP x 100 for an
embedding run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitrina.errors import ImageReadError, VitrinaError

__all__ = [
    "MIN_PRUNE",
    "PRUNE_STEP",
    "Judge",
    "Judgement",
    "change",
    "check_max_drop",
    "prune_within",
]

#: How far the target steps down when a pruned variant loses more than the budget.
PRUNE_STEP = 0.1
#: The smallest share of FLOPs (or time) the search removes before it stops.
MIN_PRUNE = 0.1
_CHUNK = 64  # photos decoded (and shifted) at a time
_CPU = "cpu"  # as optimize measures every variant: fp32 on the CPU, like the pruned one


def change(drop: float) -> str:
    """A drop in points as the signed change a report prints: ``1.25`` -> ``"-1.2"``, a gain
    ``-0.5`` -> ``"+0.5"``, and never ``"-0.0"``."""
    return f"{round(-drop, 1) + 0.0:+.1f}"


@dataclass
class Judgement:
    """One pruning target tried: the share removed, and the points the pruned variant lost
    against fp32 on each set of photos (``clean`` and each shift)."""

    target: float
    drops: dict[str, float]
    max_drop: float

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.drops, key=lambda k: self.drops[k])
        return name, self.drops[name]

    @property
    def held(self) -> bool:
        return self.worst[1] <= self.max_drop + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "held": self.held,
            "worst": self.worst[0],
            "summary": self.describe(),
        }

    def describe(self) -> str:
        name, drop = self.worst
        parts = ", ".join(f"{k} {change(v)}" for k, v in self.drops.items())
        verdict = "within" if self.held else "over"
        return (
            f"removing {self.target:.0%}: {parts} pts against fp32; worst {name} "
            f"{change(drop)}, {verdict} the budget of {self.max_drop:g}"
        )


def check_max_drop(max_drop: float | None, pruning: bool) -> None:
    """Refuse a budget that cannot be met or has nothing to apply to, before any work."""
    if max_drop is None:
        return
    if not pruning:
        raise VitrinaError(
            "--prune-max-drop is a budget for the pruned variant: add pruned to --variants"
        )
    if not (math.isfinite(max_drop) and max_drop > 0):
        raise VitrinaError(
            f"--prune-max-drop is the accuracy (or mAP) a pruned variant may lose, in points, "
            f"more than 0 (1.0: one point); got {max_drop}"
        )


def _targets(first: float) -> list[float]:
    """``first``, then a step less each time, down to :data:`MIN_PRUNE`."""
    out = [first]
    while out[-1] - PRUNE_STEP >= MIN_PRUNE - 1e-9:
        out.append(round(out[-1] - PRUNE_STEP, 6))
    return out


class Judge:
    """Scores fp32 and a pruned engine on the evaluation photos and their shifted copies.

    ``score``: answers of one set of photos (in order) and their labels -> a score in [0, 1]
    (accuracy, or mAP). fp32's scores are measured once and kept."""

    def __init__(
        self,
        model: Any,
        task: Any,
        paths: Sequence[Path],
        labels: Sequence[int],
        score: Callable[[list[Any], list[int]], float],
        answer: Callable[[list[Any]], list[Any]],
        batch_size: int,
        stage: Callable[[str], None],
    ) -> None:
        from vitrina.data.shifts import SHIFTS

        self.model, self.task, self.score, self.answer = model, task, score, answer
        self.paths, self.labels = list(paths), list(labels)
        self.sets: dict[str, Callable[[Any], Any] | None] = {"clean": None, **SHIFTS}
        self.batch_size, self.stage = batch_size, stage
        self._fp32: dict[str, float] | None = None

    def _photos(self, shift: Callable[[Any], Any] | None) -> Iterator[tuple[list[Any], list[int]]]:
        """Chunks of decoded (and shifted) photos with their labels; unreadable ones skipped
        (the main measurement reports them)."""
        from vitrina.io import read_image

        for s in range(0, len(self.paths), _CHUNK):
            images, labels = [], []
            for p, y in zip(self.paths[s : s + _CHUNK], self.labels[s : s + _CHUNK], strict=True):
                try:
                    img = read_image(p)
                except (ImageReadError, OSError):
                    continue
                images.append(img if shift is None else shift(img))
                labels.append(y)
            yield images, labels

    def _scores(self, engines: dict[str, Any]) -> dict[str, dict[str, float]]:
        from vitrina.engine import Engine

        reader = Engine(
            self.model, backend="eager", device=_CPU, batch_size=self.batch_size, num_workers=0
        )
        out: dict[str, dict[str, float]] = {n: {} for n in engines}
        for name, shift in self.sets.items():
            answers: dict[str, list[Any]] = {n: [] for n in engines}
            labels: list[int] = []
            for images, ys in self._photos(shift):
                for batch in reader.prepared_batches(self.task, images, num_workers=0):
                    if not batch.prepared:
                        continue
                    labels += [ys[i] for i in batch.indices]
                    for n, eng in engines.items():
                        answers[n] += self.answer(eng.run_prepared(self.task, batch.prepared))
            if not labels:
                raise VitrinaError("no readable photo to judge the pruned variant on")
            for n in engines:
                out[n][name] = self.score(answers[n], labels)
        return out

    def __call__(self, target: float, max_drop: float) -> Judgement:
        from vitrina.engine import Engine

        engines: dict[str, Any] = {
            "pruned": Engine(self.model, backend="pruned", device=_CPU, batch_size=self.batch_size)
        }
        if self._fp32 is None:
            engines["fp32"] = Engine(
                self.model, backend="eager", device=_CPU, batch_size=self.batch_size
            )
        self.stage(
            f"pruned: judging the variant that removes {target:.0%} on the evaluation photos, "
            f"relit, shifted and rescaled"
        )
        scores = self._scores(engines)
        if self._fp32 is None:
            self._fp32 = scores["fp32"]
        drops = {k: 100.0 * (self._fp32[k] - scores["pruned"][k]) for k in self.sets}
        return Judgement(target, drops, max_drop)


def prune_within(
    build: Callable[[float], Any],
    judge: Callable[[float, float], Judgement],
    first: float,
    max_drop: float,
    stage: Callable[[str], None],
) -> tuple[Any, list[Judgement]]:
    """Build at ``first`` (a share to remove), then a step less each time, until the judged
    drop holds within ``max_drop`` points (module docstring). Returns the last variant built
    (the one on disk) and every judgement, in order."""
    tried: list[Judgement] = []
    result = None
    for target in _targets(first):
        result = build(target)
        j = judge(target, max_drop)
        tried.append(j)
        stage(f"pruned: {j.describe()}")
        if j.held:
            break
    return result, tried
