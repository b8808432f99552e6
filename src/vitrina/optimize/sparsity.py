"""MorphNet's regulariser: drive channels to zero where they cost the most FLOPs.

Gordon et al., "MorphNet: Fast & Simple Resource-Constrained Structure Learning of Deep
Networks" (CVPR 2018): a sparsifying penalty on the batch-norm scales (gamma), each
channel's weighted by what the channel costs, added to the training loss; channels whose
scale reaches zero are removed. Here the penalty is

    R = sum over groups g, channels i of   cost_g x || scales of channel i of group g ||_2

(``cost_g``: the FLOPs one more channel of group ``g`` costs at the widths still alive,
normalised so that the average channel costs 1 — :meth:`ChannelGroups.channel_costs`).

**How it is minimised.** MorphNet adds R to the loss for a whole training run: over many
thousand steps, a channel survives where the loss's gradient pushes back harder than the
penalty's cost, which comes down to *how much the outputs depend on the channel, per FLOP*.
A fine-tune of a few dozen steps on a few hundred photos never gets there: plain gradient
steps would just shrink every scale by its cost. So the penalty is applied as a proximal
step in the metric of the loss's curvature (a diagonal proximal-Newton step): with ``H_i``
the curvature of the distillation loss along channel ``i``'s scales (the Gauss-Newton /
Fisher diagonal, :func:`scale_curvature`), each step solves

    min over s:  H_i / 2 x ||s - s_i||^2  +  strength x cost_g x ||s||

i.e. moves channel ``i``'s scales ``strength x cost_g / H_i`` towards zero and stops at zero
(group soft-thresholding). The order in which channels reach zero is then the order of
``||s_i|| x H_i / cost_g`` — what the loss would lose per FLOP saved — in a handful of steps
rather than thousands. With ``H = 1`` it is the plain proximal step of R. Proximal steps put
channels *exactly* at zero (a gradient step makes them oscillate around it) and keep the cost
weighting intact under any optimizer (Adam's per-parameter scaling would flatten a penalty
added to the loss into equal steps).

How strong the penalty must be for a given FLOP target is not known in advance, so
:class:`FlopRegularizer` steers it: while the channels still alive cost more than the target
it applies and grows by ``adapt`` per step; once they cost no more, it pauses — a
controller on the alive FLOPs that cannot run far past the target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitrina.optimize.channels import ChannelGroups

__all__ = ["FlopRegularizer", "channel_fisher", "scale_curvature"]


class FlopRegularizer:
    """The FLOP-weighted group-lasso penalty on ``groups``' scales, steered to ``target_flops``.

    Args:
        groups: the prunable channel groups (their scales are shrunk in place).
        target_flops: FLOPs per image the alive channels should cost (None: a fixed strength).
        curvature: per group, each channel's curvature ``H_i`` (:func:`scale_curvature`);
            None: 1 everywhere (the plain proximal step of R).
        strength: the starting strength; default: one that would zero the median channel
            (in the order the step zeroes them) in ``horizon`` steps if nothing pushed back.
        adapt: relative growth of the strength per step while above the target.
        horizon: see ``strength``.
    """

    def __init__(
        self,
        groups: ChannelGroups,
        *,
        target_flops: float | None = None,
        curvature: Sequence[torch.Tensor] | None = None,
        strength: float | None = None,
        adapt: float = 0.1,
        horizon: int = 100,
    ) -> None:
        self.groups = groups
        self.target_flops = target_flops
        self.adapt = float(adapt)
        if curvature is None:
            self.curvature = [torch.ones(g.width) for g in groups.groups]
        else:
            flat = torch.cat([h.detach().float().cpu() for h in curvature])
            unit = float(flat[flat > 0].median()) if bool((flat > 0).any()) else 1.0
            # In units of the median channel's: the strength keeps its meaning across models.
            self.curvature = [h.detach().float().cpu().clamp(min=0) / unit for h in curvature]
        self.strength: float | None = float(strength) if strength is not None else None
        self.horizon = max(int(horizon), 1)
        self.steps = 0
        # The (fractional) step at which each channel reached zero (inf: alive). Where the
        # penalty overshot the target, the channels that died first are the first to go.
        self.died = [torch.full((g.width,), math.inf) for g in groups.groups]

    def _default_strength(self, lr: float) -> float:
        costs = self.costs()
        ratios = torch.cat(
            [
                g.norms().cpu() * h / max(c, 1e-12)
                for g, h, c in zip(self.groups.groups, self.curvature, costs, strict=True)
            ]
        )
        return float(ratios.median()) / (max(lr, 1e-12) * self.horizon)

    # ------------------------------------------------------------------ what it measures
    def alive(self) -> list[int]:
        """Channels of each group whose scales are not all zero."""
        return [int((g.norms() > 0).sum()) for g in self.groups.groups]

    def alive_flops(self) -> float:
        """FLOPs per image of the network the alive channels make."""
        return self.groups.flops([max(a, 1) for a in self.alive()])

    def costs(self) -> list[float]:
        """Each group's cost per channel at the alive widths, normalised so that the average
        channel (FLOPs per channel of the whole network) costs 1."""
        alive = [max(a, 1) for a in self.alive()]
        raw = self.groups.channel_costs(alive)
        unit = self.groups.flops(alive) / max(sum(alive), 1)
        return [c / max(unit, 1e-12) for c in raw]

    def value(self) -> torch.Tensor:
        """The penalty R (without the strength), differentiable in the scales."""
        costs = self.costs()
        return sum(
            (c * g.norm_tensor().sum() for g, c in zip(self.groups.groups, costs, strict=True)),
            torch.zeros(()),
        )

    def saliency(self) -> list[torch.Tensor]:
        """Per group, each channel's ``||scales|| x H / cost``: the order the step zeroes them."""
        costs = self.costs()
        return [
            g.norms().cpu() * h / max(c, 1e-12)
            for g, h, c in zip(self.groups.groups, self.curvature, costs, strict=True)
        ]

    # ------------------------------------------------------------------ what it does
    @torch.no_grad()
    def step(self, lr: float = 1.0) -> dict[str, Any]:
        """The proximal step (scaled by ``lr``), then the steering.

        Steering: while the alive channels cost more than the target, the penalty applies and
        grows by ``adapt`` per step; once they cost no more, it pauses (the task's gradient
        may revive channels, which resumes it)."""
        self.steps += 1
        if self.target_flops is not None and self.alive_flops() <= self.target_flops:
            return {"alive_flops": self.alive_flops(), "strength": self.strength or 0.0}
        if self.strength is None:
            self.strength = self._default_strength(lr)
        costs = self.costs()
        for g, h, c, died in zip(self.groups.groups, self.curvature, costs, self.died, strict=True):
            amount = lr * self.strength * c / h.clamp(min=1e-12)
            norms = g.norms().cpu()
            g.shrink(amount)
            dead = (g.norms() == 0).cpu()
            # When in this step it reached zero: the smaller its norm against the step, sooner.
            new = dead & torch.isinf(died)
            died[new] = self.steps - 1 + (norms[new] / amount[new].clamp(min=1e-30)).clamp(max=1.0)
            died[~dead] = math.inf
        flops = self.alive_flops()
        if self.target_flops is not None and flops > self.target_flops:
            self.strength *= 1 + self.adapt
        return {"alive_flops": flops, "strength": self.strength}


def scale_curvature(
    model: nn.Module,
    groups: ChannelGroups,
    batches: Iterable[torch.Tensor],
    *,
    logits: bool,
    temperature: float = 4.0,
    embedding_weight: float = 1.0,
    seed: int = 0,
) -> list[torch.Tensor]:
    """The curvature of the distillation loss (:func:`~vitrina.optimize.distill.distillation_loss`)
    at the model itself, along each channel's scales: the diagonal of its Gauss-Newton matrix,
    per image, averaged over the channel's scale entries.

    Estimated without a Hessian: at the teacher, the loss's second derivative in the logits
    is ``diag(q) - q q^T`` (``q`` the softened probabilities) and in the normalised embedding
    ``2 x embedding_weight x I``; a random vector with that covariance — ``onehot(y) - q``
    with ``y`` drawn from ``q``, and Gaussian noise — projected onto the outputs and
    back-propagated gives a gradient whose square is an unbiased estimate of the diagonal
    (independent draws per image: the cross terms vanish). One backward pass per batch.

    Shape: each tensor (width,) of its group. The model is used in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    params = [s.param for g in groups.groups for s in g.scales]
    sums = [torch.zeros(g.width) for g in groups.groups]
    seen = 0
    for n, grads in _projected_gradients(
        model, params, batches, gen, logits, temperature, embedding_weight
    ):
        by_param = {id(p): gr for p, gr in zip(params, grads, strict=True)}
        for gi, g in enumerate(groups.groups):
            sq = torch.zeros(g.width)
            count = torch.zeros(g.width)
            for s in g.scales:
                gr = by_param[id(s.param)]
                if gr is None:
                    continue
                part = gr.index_select(0, s.idx).float().reshape(len(s.idx), -1).cpu()
                sq.index_add_(0, s.root, part.pow(2).sum(1))
                count.index_add_(0, s.root, torch.full((len(s.idx),), float(part.shape[1])))
            sums[gi] += sq / count.clamp(min=1)
        seen += n
    return [s / max(seen, 1) for s in sums]


def _projected_gradients(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Iterable[torch.Tensor],
    gen: torch.Generator,
    logits: bool,
    temperature: float,
    embedding_weight: float,
) -> Iterator[tuple[int, tuple[torch.Tensor | None, ...]]]:
    """Per batch: (images, gradients of ``params``) of the random projection of the outputs
    whose squared gradient estimates the Gauss-Newton diagonal (see :func:`scale_curvature`)."""
    was = model.training
    model.eval()
    try:
        for x in batches:
            if x.numel() == 0:
                continue
            emb = model.embed(x)  # type: ignore[operator]
            n = F.normalize(emb.float(), dim=1)
            v = torch.randn(n.shape, generator=gen).to(n.device)
            target = (n * v).sum() * math.sqrt(2 * embedding_weight)
            if logits:
                z = model.head_module()(emb).float() / temperature  # type: ignore[operator]
                q = torch.softmax(z, dim=1).detach()
                y = torch.multinomial(q.cpu(), 1, generator=gen).squeeze(1).to(q.device)
                u = F.one_hot(y, q.shape[1]).to(q.dtype) - q
                target = target + (u * z).sum() * temperature  # T^2 x KL: logits / T, x T
            yield len(x), torch.autograd.grad(target, list(params), allow_unused=True)
    finally:
        model.train(was)


def channel_fisher(
    model: nn.Module,
    groups: ChannelGroups,
    batches: Iterable[torch.Tensor],
    *,
    logits: bool,
    temperature: float = 4.0,
    embedding_weight: float = 1.0,
    seed: int = 0,
) -> list[torch.Tensor]:
    """How much the distillation loss rises when each channel is removed: the Fisher
    information of a mask on the channel's batch-norm outputs (Theis et al., "Faster gaze
    prediction with dense networks and Fisher pruning", 2018), per image.

    Removing channel ``i`` sets its batch-norm outputs ``gamma x xhat + beta`` to zero, i.e.
    a mask ``m_i`` from 1 to 0; with ``g = dL/dm_i = sum(gamma x dL/dgamma + beta x dL/dbeta)``
    over the channel's batch norms, the loss rises by about ``F_i / 2`` with ``F_i = E[g^2]``
    (second order, at the teacher where the first-order term vanishes). ``g`` comes from the
    same random projection as :func:`scale_curvature` (one backward pass per batch). Groups
    without batch norm (scales are output filters) use ``sum(w x dL/dw)`` over the filters.

    Shape: each tensor (width,) of its group."""
    gen = torch.Generator().manual_seed(seed)
    pairs = [(s.param, s.bias) for g in groups.groups for s in g.scales]
    params = [t for pair in pairs for t in pair if t is not None]
    sums = [torch.zeros(g.width) for g in groups.groups]
    seen = 0
    for n, grads in _projected_gradients(
        model, params, batches, gen, logits, temperature, embedding_weight
    ):
        by_param = {id(p): gr for p, gr in zip(params, grads, strict=True)}
        for gi, g in enumerate(groups.groups):
            mask_grad = torch.zeros(g.width)
            for s in g.scales:
                for t in (s.param, s.bias):
                    gr = by_param.get(id(t)) if t is not None else None
                    if gr is None:
                        continue
                    part = (t.detach() * gr).index_select(0, s.idx).float()
                    mask_grad.index_add_(0, s.root, part.reshape(len(s.idx), -1).sum(1).cpu())
            sums[gi] += mask_grad.pow(2)
        seen += n
    return [s / max(seen, 1) for s in sums]
