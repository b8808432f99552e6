"""Pruning that keeps accuracy: channels chosen by what they cost in FLOPs against what the
outputs lose without them, removed, and the network re-fitted and distilled from the full one.

:func:`prune_model` takes a trained model and the user's photos (no labels needed) and
returns a smaller model that answers like it:

0. **measure** — each channel's Fisher information (:func:`~vitrina.optimize.sparsity.channel_fisher`):
   how much the distillation loss rises when it is removed; divided by the FLOPs it costs
   (:meth:`ChannelGroups.channel_costs`, MorphNet's per-channel cost) it is the order in
   which channels go;
1. **sparsify** (optional, ``sparsify_epochs``) — MorphNet's regulariser: a short fine-tune
   in which the full model teaches a copy of itself while
   :class:`~vitrina.optimize.sparsity.FlopRegularizer` drives the batch-norm scales of the
   channels that cost the most FLOPs to zero, steered to the target; the channels it zeroes
   go first;
2. **select** — :func:`select_channels`: the fewest removals along that order that meet the
   FLOP target (or a latency target measured on this machine); widths are kept at multiples
   of 8 where layers are that wide (what SIMD kernels run fastest). Channels tied by a
   residual sum are kept unless ``residual=True`` (see :class:`ChannelGroups`);
3. **re-fit and remove** — the kept channels start from the full model's weights; every
   pointwise layer that reads removed channels is solved again by least squares to answer
   what the full model's layer answers (:mod:`vitrina.optimize.reconstruct`), then the
   channels are removed through Torch-Pruning's dependency graph;
4. **recover** — distillation from the full model on the user's photos
   (:class:`~vitrina.optimize.distill.DistillTask`): its answers and, with
   ``feature_weight``, its features between stages; batch-norm statistics kept (or
   re-estimated on the photos with ``reestimate_bn=True``).

The classifier keeps its classes and the embedding its width, so the pruned model is a
drop-in for the full one (``--backend pruned``).

Why this order and these defaults (measured, EfficientNet-Lite0 probe on 200 cats/dogs
photos, half the FLOPs, 200 held-out photos; fp32 99%): removing the channels, residual
streams included, in order of Fisher per FLOP left the model at chance (50%) and the
least-squares re-fit did not bring it back; keeping the residual streams, the removal alone
is at chance too, the re-fit brings it to 94%, and re-estimating batch-norm statistics on
the 200 photos afterwards takes it down to 74%. MorphNet's regulariser, run as a fine-tune
of 1 epoch on those photos, drove the alive FLOPs to 10% of the model (far past the target)
with the student agreeing with the teacher on 54% of the photos.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel
from vitrina.optimize.channels import ChannelGroups, LayerWidth, NotPrunableError
from vitrina.optimize.sparsity import FlopRegularizer, channel_fisher, scale_curvature
from vitrina.training.loop import Callback, LoopState, fit

__all__ = ["PruneResult", "count_flops", "protected_modules", "prune_model", "select_channels"]

#: Widths are rounded up to multiples of this where a group has at least 2x as many channels.
ROUND_TO = 8
#: Photos the curvature of the distillation loss (and each channel's Fisher) is estimated on.
CURVATURE_IMAGES = 96
#: Photos the layers that read removed channels are re-fitted on (one batch).
RECONSTRUCT_IMAGES = 96


@dataclass
class PruneResult:
    """The pruned model and what was done to it."""

    model: VitrinaModel
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    widths: list[LayerWidth]
    sparsify: list[dict[str, Any]] = field(default_factory=list)
    recover: list[dict[str, Any]] = field(default_factory=list)
    zeroed_channels: int = 0  # channels the regulariser put at zero
    removed_channels: int = 0
    target: dict[str, Any] = field(default_factory=dict)
    latency_probes: list[dict[str, float]] = field(default_factory=list)
    refit: list[dict[str, Any]] = field(default_factory=list)  # least-squares re-fitted layers
    reestimated_bn: bool = False

    def notes(self) -> dict[str, Any]:
        """JSON-ready summary (what ``variants/report.json`` keeps)."""
        return {
            "target": self.target,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "flops_ratio": self.flops_after / self.flops_before if self.flops_before else 0.0,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "zeroed_channels": self.zeroed_channels,
            "removed_channels": self.removed_channels,
            "latency_probes": self.latency_probes,
            "refit": self.refit,
            "reestimated_bn": self.reestimated_bn,
            "sparsify": self.sparsify,
            "recover": self.recover,
            "widths": [vars(w) for w in self.widths],
        }


# ---------------------------------------------------------------------------- the model's sides
def protected_modules(model: VitrinaModel) -> list[nn.Module]:
    """Modules whose widths must not change: the classifier, and an embedding model's neck."""
    keep = [model.head_module()]
    neck = getattr(model, "neck", None)
    if isinstance(neck, nn.Module):
        keep.append(neck)
    return keep


def _is_embedding(model: VitrinaModel) -> bool:
    from vitrina.models.embedding import EmbeddingModel

    return isinstance(model, EmbeddingModel)


def _forward(model: VitrinaModel) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """What the pruned model must keep computing: the embedding of an embedding model (its
    head holds prototypes of the training identities, not a layer), else the logits."""
    if _is_embedding(model):
        return lambda m, x: m.embed(x)  # type: ignore[operator]
    return lambda m, x: m.classify(x)  # type: ignore[operator]


def _example(model: VitrinaModel) -> torch.Tensor:
    h, w = model.preprocess.input_size
    device = next(model.parameters()).device
    return torch.zeros(1, model.preprocess.channels, h, w, device=device)


def count_flops(model: VitrinaModel) -> float:
    """FLOPs of one image through what the model computes (2 per multiply-accumulate), as
    ``torch.utils.flop_counter`` counts them (the zoo's convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    was = model.training
    model.eval()
    with counter, torch.no_grad():
        _forward(model)(model, _example(model))
    model.train(was)
    return float(counter.get_total_flops())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- the target search
def _min_keep(width: int, round_to: int | None) -> int:
    return min(width, round_to) if round_to and width >= 2 * round_to else 1


def _rounded(kept: int, width: int, round_to: int | None) -> int:
    kept = max(kept, _min_keep(width, round_to))
    if round_to and width >= 2 * round_to:
        kept = min(width, math.ceil(kept / round_to) * round_to)
    return kept


def select_channels(
    groups: ChannelGroups,
    target_flops: float,
    *,
    died: Sequence[torch.Tensor] | None = None,
    importance: Sequence[torch.Tensor] | None = None,
    round_to: int | None = ROUND_TO,
    accept: Callable[[list[torch.Tensor]], bool] | None = None,
) -> list[torch.Tensor]:
    """Which channels to keep (one bool tensor per group) so the network costs at most
    ``target_flops`` per image — and, when given, so that ``accept(keep)`` holds (e.g. a
    latency measured on this machine).

    Order of removal: the channels whose scales are zero first (those that reached zero
    earliest first, when ``died`` gives the step each one did); then the channels of least
    ``importance`` (per group, per channel; default: the root-mean-square of its scales per
    FLOP it costs — :meth:`FlopRegularizer.saliency` is what the regulariser ranks by). The
    fewest removals along that order that meet the target are found by bisection (the FLOPs
    fall monotonically along it). A group keeps at least one channel (``round_to`` where it
    has twice that many, and then a multiple of ``round_to``); channels a group keeps are its
    last ones in that order.

    Raises :class:`VitrinaError` when even the narrowest network allowed costs more.
    """
    gs = groups.groups
    norms = [g.norms().cpu() for g in gs]
    alive = [max(int((n > 0).sum()), 1) for n in norms]
    costs = groups.channel_costs(alive)
    keys = []
    for gi, (g, n) in enumerate(zip(gs, norms, strict=True)):
        if importance is not None:
            per_flop = importance[gi].cpu()
        else:
            per_flop = (n / math.sqrt(g.entries)) / max(costs[gi], 1e-12)
        for ci in range(g.width):
            if n[ci] == 0:
                when = float(died[gi][ci]) if died is not None else 0.0
                keys.append((0, when, gi, ci))
            else:
                keys.append((1, float(per_flop[ci]), gi, ci))
    order = [(gi, ci) for *_, gi, ci in sorted(keys)]
    # Each group's channels from the first to go to the last.
    ranked: list[list[int]] = [[] for _ in gs]
    for gi, ci in order:
        ranked[gi].append(ci)
    prefix_count = [[0] * len(gs)]
    for gi, _ in order:
        row = list(prefix_count[-1])
        row[gi] += 1
        prefix_count.append(row)

    def keep_for(p: int) -> list[torch.Tensor]:
        keep = []
        for gi, g in enumerate(gs):
            k = _rounded(g.width - prefix_count[p][gi], g.width, round_to)
            mask = torch.zeros(g.width, dtype=torch.bool)
            mask[ranked[gi][g.width - k :]] = True
            keep.append(mask)
        return keep

    def flops_of(keep: list[torch.Tensor]) -> float:
        return groups.flops([int(k.sum()) for k in keep])

    def ok(p: int) -> bool:
        keep = keep_for(p)
        return flops_of(keep) <= target_flops and (accept is None or accept(keep))

    lo, hi = 0, len(order)
    if accept is not None and not accept(keep_for(hi)):
        raise VitrinaError(
            "the latency target cannot be met: even the narrowest network that keeps the "
            "model's outputs is not that fast on this machine"
        )
    if flops_of(keep_for(hi)) > target_flops:
        full = groups.flops()
        raise VitrinaError(
            f"the target cannot be met: the narrowest network that keeps the model's outputs "
            f"costs {flops_of(keep_for(hi)) / full:.0%} of the FLOPs "
            f"(asked: {target_flops / full:.0%})"
        )
    while lo < hi:  # the fewest removals that meet the target
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return keep_for(lo)


# ---------------------------------------------------------------------------- the pipeline
def _loader(
    images: Sequence[Path], transform: Any, batch_size: int, workers: int, shuffle: bool
) -> DataLoader:
    from vitrina.data import ImageFiles, collate_skip_bad

    ds = ImageFiles(list(images), None, transform)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(ds) > batch_size,
        num_workers=workers if len(ds) > batch_size else 0,
        collate_fn=collate_skip_bad,
        generator=torch.Generator().manual_seed(0),
    )


class _SparsifyStep(Callback):
    """The regulariser's proximal step after each optimizer step."""

    def __init__(self, reg: FlopRegularizer) -> None:
        self.reg = reg
        self.last: dict[str, Any] = {}

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        record.update(self.last)

    def on_batch_end(self, state: LoopState) -> None:
        # The penalty's step size is its own (the strength, steered), not the optimizer's.
        self.last = self.reg.step(1.0)


def prune_model(
    model: VitrinaModel,
    images: Sequence[Path],
    *,
    flops: float | None = None,
    latency: float | None = None,
    measure: Callable[[VitrinaModel], float] | None = None,
    sparsify_epochs: int = 4,
    finetune_epochs: int = 8,
    batch_size: int = 32,
    lr: float = 1e-4,
    finetune_lr: float = 3e-4,
    augment: Any = None,
    round_to: int | None = ROUND_TO,
    residual: bool = False,
    reestimate_bn: bool = False,
    mixup: bool = False,
    feature_weight: float = 0.0,
    num_workers: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_epoch: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> PruneResult:
    """A copy of ``model`` with the channels removed that meet the target, recovered by
    distillation from ``model`` on ``images`` (the user's photos; no labels needed).

    Args:
        flops: the fraction of the FLOPs to remove (0.5: half).
        latency: the fraction of the time per batch to remove, as ``measure(model)`` (seconds,
            on this machine) tells; the FLOP target then only steers the sparsity, the
            channels removed are the fewest whose measured time meets the target.
        sparsify_epochs: epochs of the regularised fine-tune (AdamW, ``lr``; the penalty's
            proximal step has its own size, steered by the regulariser).
        finetune_epochs: epochs of distillation after removal (AdamW, ``finetune_lr``, cosine).
        augment: the training transform (default: ``train_transform(preprocess, "standard")``).
        residual: also remove channels of residual streams (see :class:`ChannelGroups`).
        feature_weight: also match the full model's features between stages (the blocks
            whose outputs keep their shape: :func:`~vitrina.optimize.distill.matching_features`)
            during distillation, at this weight (0: outputs only).
        reestimate_bn: re-estimate the batch-norm statistics on ``images`` after removal and
            after distillation, and let distillation update them. Off by default: the
            re-fitted layers match the full model's, whose statistics are what the classifier
            was trained against — measured on a cats/dogs probe of EfficientNet-Lite0 at half
            the FLOPs, re-estimating on the 200 training photos took the re-fitted model from
            94% to 74% (fp32: 99%). With it off, distillation keeps them frozen.
    """
    from vitrina.data import eval_transform, train_transform
    from vitrina.engine import default_workers, torch_threads
    from vitrina.optimize.distill import DistillTask, head_reads_embedding, reestimate_batchnorm
    from vitrina.optimize.reconstruct import reconstruct_pointwise

    stage = on_stage or (lambda s: None)
    for name, value in (("flops", flops), ("latency", latency)):
        if value is not None and not 0.0 < value < 1.0:
            raise VitrinaError(f"the {name} target must be a fraction between 0 and 1, got {value}")
    if (flops is None) == (latency is None):
        raise VitrinaError("give one pruning target: a fraction of the FLOPs or of the latency")
    if latency is not None and measure is None:
        raise VitrinaError("a latency target needs a way to measure the latency")
    if not images:
        raise VitrinaError("no photos to fine-tune the pruned model on")
    embedding = _is_embedding(model)
    device = next(model.parameters()).device
    # channels_last: 2x faster convolutions on CPUs (measured: EfficientNet-Lite0 training).
    fmt = torch.channels_last
    teacher = copy.deepcopy(model).eval().to(memory_format=fmt)
    student = copy.deepcopy(model).eval().to(memory_format=fmt)
    example = _example(student)
    if not embedding and not head_reads_embedding(student, example):
        raise NotPrunableError(
            f"{model.arch!r}: its classifier does not read its embedding; cannot distil it"
        )
    try:
        groups = ChannelGroups(
            student,
            example,
            forward=_forward(student),
            protected=protected_modules(student),
            residual=residual,
        )
    except NotPrunableError as e:
        raise NotPrunableError(f"cannot prune {model.arch!r}: {e}") from None
    full = groups.flops()
    fraction = flops if flops is not None else latency
    assert fraction is not None
    target = full * (1 - fraction)
    floor = groups.flops([_min_keep(w, round_to) for w in groups.widths])
    if floor > target and flops is not None:
        raise VitrinaError(
            f"cannot remove {flops:.0%} of the FLOPs of {model.arch!r}: keeping its outputs, "
            f"at most {1 - floor / full:.0%} can go"
        )
    target = max(target, floor)
    flops_before, params_before = count_flops(student), _params(student)
    before_widths = groups.layer_widths()

    workers = default_workers() if num_workers is None else num_workers
    train_tf = augment or train_transform(student.preprocess, "standard")
    loader = _loader(images, train_tf, batch_size, workers, shuffle=True)
    stats_loader = _loader(images, eval_transform(student.preprocess), batch_size, workers, False)
    task = DistillTask(
        teacher, logits=not embedding, freeze_batchnorm=not reestimate_bn, mixup=mixup
    )
    # The classifier stays the full model's: the pruned features are trained to be read by it
    # (so the pruned embedding is the one that classifier reads).
    for p in student.head_module().parameters():
        p.requires_grad_(False)
    threads = workers if len(images) > batch_size else 0
    fwd = _forward(student)

    class _Report(Callback):
        def __init__(self, phase: str) -> None:
            self.phase = phase

        def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
            record.update({k: v for k, v in task.last_parts.items()})
            if on_epoch:
                on_epoch(self.phase, state.epoch, record)

    # 0. what each channel is worth: the Fisher of its removal, per FLOP --------------------
    stage("pruned: measuring how much the outputs depend on each channel")
    with torch_threads(threads):
        fisher = channel_fisher(
            student, groups, _images(stats_loader, device, limit=CURVATURE_IMAGES),
            logits=not embedding,
        )  # fmt: skip

    # 1. sparsify ------------------------------------------------------------------------
    curvature = None
    if sparsify_epochs > 0:
        with torch_threads(threads):
            curvature = scale_curvature(
                student, groups, _images(stats_loader, device, limit=CURVATURE_IMAGES),
                logits=not embedding,
            )  # fmt: skip
    reg = FlopRegularizer(
        groups,
        target_flops=target,
        curvature=curvature,
        horizon=max(1, sparsify_epochs * len(loader)),
    )
    sparsify: list[dict[str, Any]] = []
    if sparsify_epochs > 0:
        stage(
            f"pruned: {sparsify_epochs} epochs of FLOP-weighted sparsity towards "
            f"{target / full:.0%} of {full / 1e9:.2f} GFLOPs, on {len(images)} photos"
        )
        opt = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
        )
        prox = _SparsifyStep(reg)
        with torch_threads(threads):
            state = fit(
                student, task, loader, None, opt, None,
                epochs=sparsify_epochs, callbacks=[prox, _Report("sparsify")], device=device,
            )  # fmt: skip
        sparsify = _numbers(state.history)
    norms = [g.norms() for g in groups.groups]
    zeroed = int(sum(int((n == 0).sum()) for n in norms))

    # 2. select ---------------------------------------------------------------------------
    probes: list[dict[str, float]] = []
    accept = None
    if latency is not None:
        assert measure is not None
        stage("pruned: timing candidates against the full model on this machine")

        def accept(keep: list[torch.Tensor]) -> bool:
            trial = groups.copy()
            trial.remove(keep)
            # the full model timed again beside each candidate (first: a timer may keep its
            # session): a shared machine's load drifts between probes (one candidate read
            # 61-78% of a single first timing)
            now = measure(teacher)
            t = measure(trial.model)  # type: ignore[arg-type]
            probes.append(
                {
                    "flops": trial_flops(keep) / full,
                    "seconds": t,
                    "full_seconds": now,
                    "ratio": t / now,
                }
            )
            stage(f"pruned: {probes[-1]['flops']:.0%} of the FLOPs takes {t / now:.0%} of the time")
            return t / now <= 1 - latency

        def trial_flops(keep: list[torch.Tensor]) -> float:
            return groups.flops([int(k.sum()) for k in keep])

        target = full  # the FLOPs only order the channels; time decides how many go
    stage("pruned: choosing the channels to remove")
    costs = groups.channel_costs()
    importance = [f / max(c, 1e-12) for f, c in zip(fisher, costs, strict=True)]
    keep = select_channels(
        groups, target, died=reg.died, importance=importance, round_to=round_to, accept=accept
    )
    removed = int(sum(int((~k).sum()) for k in keep))

    # 3. remove ---------------------------------------------------------------------------
    # The regulariser chose the structure; the channels kept start from the full model's
    # weights (MorphNet trains the structure it found, it does not keep the shrunk scales).
    student.load_state_dict(teacher.state_dict())
    groups.mask(keep)
    stage("pruned: re-fitting the layers that read removed channels (least squares)")
    recon_batch = torch.cat(list(_images(stats_loader, device, limit=RECONSTRUCT_IMAGES)))
    with torch_threads(threads):
        refit = reconstruct_pointwise(
            student, teacher, recon_batch[:RECONSTRUCT_IMAGES], forward=fwd
        )
    del recon_batch
    stage(f"pruned: removing {removed} channels")
    after_widths = [n for _, n in groups.layer_widths([int(k.sum()) for k in keep])]
    groups.remove(keep)
    student.to(memory_format=fmt).eval()
    with torch.no_grad():
        student.num_features = int(student.embed(example).shape[1])

    # 4. recover --------------------------------------------------------------------------
    if feature_weight > 0:
        from vitrina.optimize.distill import matching_features

        task.features = matching_features(student, teacher, example, fwd)
        task.feature_weight = feature_weight
        if task.features:
            stage(f"pruned: distillation also matches the features of {', '.join(task.features)}")
    skip = protected_modules(student)
    if reestimate_bn:
        with torch_threads(threads):
            reestimate_batchnorm(student, _images(stats_loader, device), forward=fwd, skip=skip)
    recover: list[dict[str, Any]] = []
    if finetune_epochs > 0:
        stage(f"pruned: {finetune_epochs} epochs of distillation from the full model")
        opt = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=finetune_lr, weight_decay=0.0
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=finetune_epochs)
        with torch_threads(threads):
            state = fit(
                student, task, loader, None, opt, sched,
                epochs=finetune_epochs, callbacks=[_Report("distill")], device=device,
            )  # fmt: skip
            if reestimate_bn:
                reestimate_batchnorm(student, _images(stats_loader, device), forward=fwd, skip=skip)
        recover = _numbers(state.history)
    student.to(memory_format=torch.contiguous_format).eval()
    widths = [
        LayerWidth(name, b, a) for (name, b), a in zip(before_widths, after_widths, strict=True)
    ]
    return PruneResult(
        model=student,
        flops_before=flops_before,
        flops_after=count_flops(student),
        params_before=params_before,
        params_after=_params(student),
        widths=widths,
        sparsify=sparsify,
        recover=recover,
        zeroed_channels=zeroed,
        removed_channels=removed,
        target={"flops": flops, "latency": latency, "target_flops": target},
        reestimated_bn=reestimate_bn,
        latency_probes=probes,
        refit=refit,
    )


def _images(loader: DataLoader, device: torch.device, limit: int | None = None) -> Any:
    seen = 0
    for b in loader:
        if limit is not None and seen >= limit:
            return
        if b.images.numel():
            seen += len(b.images)
            yield b.images.to(device).contiguous(memory_format=torch.channels_last)


def _numbers(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in history]
