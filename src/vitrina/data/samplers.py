"""Batches for metric learning: P x K (P identities, K images each, in every batch) and
balanced Siamese pairs.

Why not pytorch-metric-learning's ``MPerClassSampler``: it draws from a module-global numpy
RandomState (so seeding it means mutating a global), yields a flat index stream rather than
batches, and keeps identities with one image, which give no positive pair. This sampler is
seeded per instance and per epoch (``set_epoch``) and yields whole batches, so it plugs into
``DataLoader(batch_sampler=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from vitrina.errors import DataError

__all__ = ["PKSampler", "PairSampler", "pk_batches"]


def _group(labels: Sequence[int] | np.ndarray) -> tuple[list[np.ndarray], int]:
    """Indices per identity with >= 2 images (in label order), and how many had just one."""
    y = np.asarray(labels).reshape(-1)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(counts)[:-1])
    kept = [g for g in groups if len(g) >= 2]
    return kept, int((counts < 2).sum())


def _check(p: int, k: int, groups: list[np.ndarray], dropped: int) -> None:
    if p < 1 or k < 2:
        raise DataError(f"P x K sampler: need p >= 1 and k >= 2 (got p={p}, k={k})")
    if len(groups) < p:
        why = f" ({dropped} with a single image dropped)" if dropped else ""
        raise DataError(
            f"P x K sampler: only {len(groups)} identities with >= 2 images{why}; P must be "
            f"<= {len(groups)} (use a smaller --p)"
        )


def _epoch_batches(
    groups: list[np.ndarray], p: int, k: int, n_batches: int, rng: np.random.Generator
) -> list[list[int]]:
    """Identities are visited in shuffled rounds (each once per round, P distinct per batch);
    an identity's images are drawn without repeats until used up, then reshuffled."""
    queue: list[int] = []
    pools: list[list[int]] = [[] for _ in groups]
    batches: list[list[int]] = []
    for _ in range(n_batches):
        chosen: list[int] = []
        while len(chosen) < p:
            if not queue:
                queue = rng.permutation(len(groups)).tolist()
            g = queue.pop()
            if g in chosen:  # a new round began mid-batch: put it back for the next batch
                queue.insert(0, g)
                continue
            chosen.append(g)
        batch: list[int] = []
        for g in chosen:
            idx = groups[g]
            if len(idx) < k:  # all of them, then repeats
                extra = rng.choice(idx, size=k - len(idx), replace=True)
                batch += rng.permutation(idx).tolist() + extra.tolist()
                continue
            if len(pools[g]) < k:
                pools[g] = rng.permutation(idx).tolist()
            batch += pools[g][:k]
            del pools[g][:k]
        batches.append(batch)
    return batches


def pk_batches(
    labels: Sequence[int] | np.ndarray, p: int, k: int, seed: int = 0, epoch: int = 0
) -> list[list[int]]:
    """One epoch of P x K batches of indices into ``labels`` (see ``PKSampler``)."""
    return list(PKSampler(labels, p, k, seed=seed).set_epoch(epoch))


class PKSampler(Sampler[list[int]]):
    """Batch sampler: every batch is exactly ``p`` distinct identities x ``k`` images
    (``p * k`` indices, grouped by identity). An identity with fewer than ``k`` images gives
    all of them plus repeats. Identities with a single image are dropped
    (``dropped_singletons``). ``len()`` = ``max(1, kept images // (p * k))`` batches; the
    epoch's batches depend only on ``(seed, epoch)``.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, p: int, k: int, *, seed: int = 0):
        self.groups, self.dropped_singletons = _group(labels)
        _check(p, k, self.groups, self.dropped_singletons)
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.num_images = sum(len(g) for g in self.groups)

    def set_epoch(self, epoch: int) -> PKSampler:
        """Choose the epoch whose batches ``iter`` yields (call once per epoch)."""
        self.epoch = epoch
        return self

    def __len__(self) -> int:
        return max(1, self.num_images // (self.p * self.k))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(_epoch_batches(self.groups, self.p, self.k, len(self), rng))


class PairSampler(Sampler[list[int]]):
    """Batch sampler of Siamese pairs: every batch is ``pairs`` pairs of indices laid out as
    ``[a1, b1, a2, b2, ...]``, half of them *same* (two distinct images of one identity) and
    half *different* (images of two identities), in shuffled order. Positives come from the
    identities with at least two images (each chosen uniformly), negatives from any two
    identities. ``len()`` = ``max(1, images // (2 * pairs))`` batches; an epoch's batches
    depend only on ``(seed, epoch)`` (``set_epoch``), so a resumed run sees the same pairs.

    The Siamese step of the review (a network judging pairs) before triplets: a P×K batch
    gives a loss every pair and triplet in it, a pair batch only its sampled pairs.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, pairs: int, *, seed: int = 0):
        y = np.asarray(labels).reshape(-1)
        if pairs < 2:
            raise DataError(f"pair sampler: need at least 2 pairs per batch (got {pairs})")
        ids, inverse = np.unique(y, return_inverse=True)
        self.groups = [np.flatnonzero(inverse == i) for i in range(len(ids))]
        self.multi = [g for g in self.groups if len(g) >= 2]
        if len(self.groups) < 2 or not self.multi:
            raise DataError(
                f"pair sampler: need 2 or more identities, one of them with 2 or more images "
                f"(got {len(self.groups)} identities, {len(self.multi)} with 2+ images)"
            )
        self.pairs, self.seed, self.epoch = int(pairs), seed, 0
        self.num_images = len(y)
        self.dropped_singletons = 0  # singletons still serve as negatives

    def set_epoch(self, epoch: int) -> PairSampler:
        """Choose the epoch whose batches ``iter`` yields (call once per epoch)."""
        self.epoch = epoch
        return self

    def __len__(self) -> int:
        return max(1, self.num_images // (2 * self.pairs))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        n_same = self.pairs // 2
        batches = []
        for _ in range(len(self)):
            pairs: list[tuple[int, int]] = []
            for _ in range(n_same):
                g = self.multi[int(rng.integers(len(self.multi)))]
                a, b = rng.choice(g, size=2, replace=False)
                pairs.append((int(a), int(b)))
            for _ in range(self.pairs - n_same):
                gi, gj = rng.choice(len(self.groups), size=2, replace=False)
                pairs.append((int(rng.choice(self.groups[gi])), int(rng.choice(self.groups[gj]))))
            order = rng.permutation(len(pairs))
            batches.append([i for k in order for i in pairs[k]])
        return iter(batches)
