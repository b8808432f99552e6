"""Siamese pairs: the balanced pair sampler, the pair losses, and train-embedding with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitrina.data.samplers import PairSampler
from vitrina.errors import DataError, VitrinaError
from vitrina.losses import build_criterion

LABELS = [0] * 5 + [1] * 3 + [2] * 4 + [3]  # identity 3 has one image


def _pairs(batch: list[int]) -> list[tuple[int, int]]:
    return list(zip(batch[::2], batch[1::2], strict=True))


def test_pair_batches_are_balanced_valid_and_seeded() -> None:
    s = PairSampler(LABELS, pairs=6, seed=3)
    assert len(s) == max(1, len(LABELS) // 12)
    for epoch in range(5):
        for batch in s.set_epoch(epoch):
            assert len(batch) == 12
            pairs = _pairs(batch)
            same = [LABELS[a] == LABELS[b] for a, b in pairs]
            assert sum(same) == 3  # exactly half
            for (a, b), is_same in zip(pairs, same, strict=True):
                assert 0 <= a < len(LABELS) and 0 <= b < len(LABELS)
                if is_same:
                    assert a != b  # two distinct images of one identity
    first = [list(b) for b in PairSampler(LABELS, pairs=6, seed=3).set_epoch(1)]
    again = [list(b) for b in PairSampler(LABELS, pairs=6, seed=3).set_epoch(1)]
    other = [list(b) for b in PairSampler(LABELS, pairs=6, seed=3).set_epoch(2)]
    assert first == again and first != other
    # the singleton identity appears only in negative pairs
    seen = [
        (a, b) for e in range(30) for bt in s.set_epoch(e) for a, b in _pairs(bt) if 12 in (a, b)
    ]
    assert seen and all(LABELS[a] != LABELS[b] for a, b in seen)


def test_pair_sampler_needs_two_identities_and_a_positive() -> None:
    with pytest.raises(DataError, match="2 or more identities"):
        PairSampler([0, 0, 0], pairs=2)
    with pytest.raises(DataError, match="2 or more images"):
        PairSampler([0, 1, 2], pairs=2)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 8, generator=g)
    y = torch.tensor([0, 0, 1, 2, 1, 1, 0, 3, 2, 2, 3, 1])  # pairs: same, diff, same, diff, ...
    return x, y


def test_siamese_contrastive_uses_only_the_sampled_pairs() -> None:
    x, y = _batch()
    crit = build_criterion("siamese-contrastive", num_classes=4, embedding_dim=8)
    total, parts = crit(x, None, y)
    d = (x[0::2] - x[1::2]).norm(dim=1)
    same = y[0::2] == y[1::2]
    pos = F.relu(d[same] - 0.0)
    neg = F.relu(1.0 - d[~same])

    def avg_nonzero(v: torch.Tensor) -> torch.Tensor:
        nz = v[v > 0]
        return nz.mean() if len(nz) else v.sum() * 0

    torch.testing.assert_close(total, avg_nonzero(pos) + avg_nonzero(neg))
    assert set(parts) == {"siamese-contrastive"}


def test_siamese_binary_is_logistic_on_abs_difference() -> None:
    x, y = _batch(1)
    crit = build_criterion("siamese-binary", num_classes=4, embedding_dim=8)
    head = crit.terms[0].loss.head
    total, _ = crit(x, None, y)
    logits = head((x[0::2] - x[1::2]).abs()).squeeze(1)
    target = (y[0::2] == y[1::2]).float()
    torch.testing.assert_close(total, F.binary_cross_entropy_with_logits(logits, target))
    assert sum(p.numel() for p in crit.parameters()) == 9  # the head belongs to the loss


def test_pair_losses_need_pair_batches() -> None:
    crit = build_criterion("siamese-binary", num_classes=2, embedding_dim=4)
    with pytest.raises(ValueError, match="pair batch"):
        crit(torch.randn(3, 4), None, torch.tensor([0, 1, 0]))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"loss": "siamese-contrastive"}, "add --sampler pairs"),
        ({"loss": "triplet-batch-hard", "sampler": "pairs"}, "use a pair loss"),
        ({"loss": "siamese-binary", "sampler": "pair"}, "did you mean: pairs"),
    ],
)
def test_sampler_and_loss_must_agree(tmp_path: Path, kw: dict, message: str) -> None:
    from vitrina.training.embedding import EmbeddingConfig

    with pytest.raises(VitrinaError, match=message):
        EmbeddingConfig(data_dir=str(tmp_path), **kw).resolved()


@pytest.mark.parametrize("loss", ["siamese-contrastive", "siamese-binary+softmax"])
def test_train_embedding_with_siamese_pairs(tmp_path: Path, loss: str) -> None:
    from test_train_embedding import cfg, make_identities
    from vitrina.runs import read_run
    from vitrina.training.embedding import train_embedding

    ids = make_identities(tmp_path / "ids", n_ids=6, per_id=6)
    res = train_embedding(
        cfg(ids, tmp_path / "run", loss=loss, sampler="pairs", epochs=2), progress=False
    )
    info = read_run(res.run_dir)
    assert info.config["sampler"] == "pairs" and info.config["loss"] == loss
    assert 0.0 <= res.metrics["val_mAP"] <= 1.0
    assert np.isfinite(res.history[-1]["train_loss"])
