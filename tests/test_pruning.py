"""Pruning that keeps accuracy (MorphNet): the FLOP width model and the regulariser against
plain loops, removal against masking, the target search, distillation, batch-norm
re-estimation, and `vitrina optimize` with its report, plot and bad input."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import COLORS, make_dataset, one_line_error, run_cli
from vitrina.errors import VitrinaError
from vitrina.models import Preprocess, VitrinaModel
from vitrina.optimize.channels import ChannelGroups, NotPrunableError
from vitrina.optimize.distill import DistillTask, distillation_loss, reestimate_batchnorm
from vitrina.optimize.pruning import protected_modules, select_channels
from vitrina.optimize.sparsity import FlopRegularizer, scale_curvature

PRE = Preprocess(input_size=(24, 24), channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)


class TinyNet(nn.Module):
    """Stem, an inverted residual block (expand, depthwise, project, skip), a head conv,
    pooling and a linear classifier: the structures EfficientNet-Lite is made of."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.expand = nn.Sequential(
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.last = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        s = s + self.project(self.dw(self.expand(s)))
        return self.classifier(self.pool(self.last(s)))


def tiny(seed: int = 0, classes: int = 3) -> VitrinaModel:
    torch.manual_seed(seed)
    model = VitrinaModel.wrap(TinyNet(classes), arch="tiny", preprocess=PRE)
    with torch.no_grad():  # batch norms that do something: scales and shifts off their defaults
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def groups_of(model: VitrinaModel, residual: bool = True) -> ChannelGroups:
    x = torch.zeros(1, 3, *model.preprocess.input_size)
    return ChannelGroups(
        model,
        x,
        forward=lambda m, t: m.classify(t),
        protected=protected_modules(model),
        residual=residual,
    )


def counted_flops(model: VitrinaModel) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.classify(torch.zeros(1, 3, *model.preprocess.input_size))
    return counter.get_total_flops()


def random_keep(groups: ChannelGroups, seed: int, p: float = 0.5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for g in groups.groups:
        k = torch.rand(g.width, generator=gen) > p
        k[int(torch.randint(g.width, (1,), generator=gen))] = True
        keep.append(k)
    return keep


# ---------------------------------------------------------------------------- the groups
def test_groups_keep_the_outputs_and_tie_the_residual() -> None:
    model = tiny()
    gs = groups_of(model)
    names = {g.name for g in gs.groups}
    # The head conv feeds the classifier (the embedding width): never offered.
    assert not any("last" in n for n in names), names
    # stem and project are added together: one group with both batch norms.
    tied = [g for g in gs.groups if {"net.stem.0", "net.project.0"} & {g.name}]
    assert len(tied) == 1 and len(tied[0].scales) == 2 and tied[0].writers == 2
    assert all(g.uses_bn for g in gs.groups)
    # By default a residual stream is not offered: only the block's hidden channels are,
    # and the width model counts the stream's layers at their full width.
    hidden = groups_of(model, residual=False)
    assert [g.width for g in hidden.groups] == [32] and hidden.groups[0].writers == 1
    assert hidden.flops() == gs.flops()
    kept = hidden.flops([8])
    keep = [torch.arange(32) < 8]
    m = copy.deepcopy(model)
    g2 = groups_of(m, residual=False)
    g2.remove(keep)
    assert kept == counted_flops(m)


@pytest.mark.parametrize("arch", ["tiny", "tutorial_cnn"])
def test_width_model_counts_what_the_flop_counter_counts(arch: str) -> None:
    from vitrina.models import create

    model = tiny() if arch == "tiny" else create("tutorial_cnn", weights=None, num_classes=3)
    gs = groups_of(model)
    assert gs.flops() == counted_flops(model)
    for seed in range(3):
        m = copy.deepcopy(model)
        g2 = groups_of(m)
        keep = random_keep(g2, seed)
        predicted = g2.flops([int(k.sum()) for k in keep])
        g2.remove(keep)
        assert predicted == counted_flops(m), seed


def test_channel_cost_is_the_flops_one_channel_saves() -> None:
    """MorphNet's per-channel cost, against removing one channel and counting again."""
    model = tiny()
    gs = groups_of(model)
    costs = gs.channel_costs()
    full = counted_flops(model)
    for gi, g in enumerate(gs.groups):
        m = copy.deepcopy(model)
        g2 = groups_of(m)
        keep = [torch.ones(x.width, dtype=torch.bool) for x in g2.groups]
        keep[gi][0] = False
        g2.remove(keep)
        assert costs[gi] == pytest.approx(full - counted_flops(m)), g.name


# ---------------------------------------------------------------------------- the regulariser
def plain_penalty(model: nn.Module, gs: ChannelGroups, costs: list[float]) -> float:
    """The penalty written out: for each group, each channel, the square root of the sum of
    the squares of its batch-norm scales, times the group's cost."""
    total = 0.0
    for g, c in zip(gs.groups, costs, strict=True):
        bns = [s.param for s in g.scales]
        for ch in range(g.width):
            sq = 0.0
            for w in bns:
                sq += float(w[ch].detach()) ** 2
            total += c * math.sqrt(sq)
    return total


def test_flop_weighted_penalty_against_a_plain_loop() -> None:
    model = tiny()
    gs = groups_of(model)
    reg = FlopRegularizer(gs)
    costs = reg.costs()
    # normalised: in units of the network's FLOPs per channel
    unit = gs.flops() / sum(gs.widths)
    assert costs == pytest.approx([c / unit for c in gs.channel_costs()])
    value = reg.value()
    assert float(value.detach()) == pytest.approx(plain_penalty(model, gs, costs), rel=1e-5)
    # the gradient of the penalty: cost x scale / norm of the channel (a plain loop)
    value.backward()
    for g, c in zip(gs.groups, costs, strict=True):
        for s in g.scales:
            for ch in range(g.width):
                norm = math.sqrt(sum(float(t.param[ch].detach()) ** 2 for t in g.scales))
                expected = c * float(s.param[ch].detach()) / norm
                assert float(s.param.grad[ch]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("curved", [False, True])
def test_proximal_step_is_group_soft_thresholding(curved: bool) -> None:
    model = tiny()
    gs = groups_of(model)
    gen = torch.Generator().manual_seed(0)
    curvature = [torch.rand(g.width, generator=gen) + 0.1 for g in gs.groups] if curved else None
    reg = FlopRegularizer(gs, strength=2.0, curvature=curvature)
    costs = reg.costs()
    before = [[s.param.detach().clone() for s in g.scales] for g in gs.groups]
    lr = 0.3
    reg.step(lr)
    zeroed = 0
    median = float(torch.cat(curvature).median()) if curved else 1.0
    for gi, (g, c, old) in enumerate(zip(gs.groups, costs, before, strict=True)):
        for ch in range(g.width):
            h = float(curvature[gi][ch]) / median if curved else 1.0
            norm = math.sqrt(sum(float(w[ch]) ** 2 for w in old))
            factor = max(0.0, 1 - lr * 2.0 * c / h / norm)
            zeroed += factor == 0
            for s, w in zip(g.scales, old, strict=True):
                assert float(s.param[ch].detach()) == pytest.approx(float(w[ch]) * factor, abs=1e-6)
    assert zeroed > 0  # strong enough that some channels reached exactly zero
    assert reg.alive() == [int((g.norms() > 0).sum()) for g in gs.groups]


@pytest.mark.slow  # the curvature steers the optional sparsity phase only
def test_curvature_estimate_matches_the_exact_gauss_newton_diagonal() -> None:
    """The random-projection estimate, averaged over many draws, against the Gauss-Newton
    diagonal of the distillation loss written out with per-image Jacobians."""
    from torch.func import functional_call, jacrev

    model = tiny(seed=2)
    with torch.no_grad():
        model.head_module().weight.mul_(5)
    gs = groups_of(model)
    x = torch.randn(3, 3, 24, 24)
    names = {id(p): n for n, p in model.named_parameters()}
    scale_params = {names[id(s.param)]: s.param for g in gs.groups for s in g.scales}
    T = 2.0

    def outputs(params: dict, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits / T, normalised embedding) of one image as functions of the scales."""
        assert all(k.startswith("net.") for k in params)  # the batch norms are in the backbone
        emb = functional_call(model.net, {k[4:]: v for k, v in params.items()}, (xi[None],))
        z = model.head(emb)
        return z[0] / T, torch.nn.functional.normalize(emb, dim=1)[0]

    model.eval()
    exact = {n: torch.zeros_like(p) for n, p in scale_params.items()}
    for xi in x:
        jz, je = jacrev(outputs)({n: p.detach() for n, p in scale_params.items()}, xi)
        with torch.no_grad():
            z, _ = outputs({n: p.detach() for n, p in scale_params.items()}, xi)
        q = torch.softmax(z, 0)
        hz = (torch.diag(q) - q[:, None] * q[None, :]) * T * T  # T^2 KL in z/T
        for n in exact:
            a, b = jz[n], je[n]  # (C, P), (D, P)
            exact[n] += torch.einsum("cp,cd,dp->p", a, hz, a) + 2 * (b * b).sum(0)
    exact = {n: v / len(x) for n, v in exact.items()}
    want = []
    for g in gs.groups:
        acc = torch.zeros(g.width)
        for s in g.scales:
            name = names[id(s.param)]
            acc.index_add_(0, s.root, exact[name][s.idx])
        want.append(acc / len(g.scales))
    runs = [scale_curvature(model, gs, [x], logits=True, temperature=T, seed=i) for i in range(300)]
    got = [torch.stack([r[gi] for r in runs]).mean(0) for gi in range(len(gs.groups))]
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w.detach(), rtol=0.25, atol=0.02 * float(w.detach().max()))


def test_regulariser_prefers_to_zero_expensive_channels() -> None:
    """Equal scales everywhere: the channels that cost the most FLOPs reach zero first."""
    model = tiny()
    gs = groups_of(model)
    with torch.no_grad():
        for g in gs.groups:
            for s in g.scales:
                s.param.fill_(1.0 / math.sqrt(len(g.scales)))  # every channel's norm is 1
    reg = FlopRegularizer(gs, strength=1.0)
    costs = reg.costs()
    while all(a == w for a, w in zip(reg.alive(), gs.widths, strict=True)):
        reg.step(0.05)
    first_dead = [i for i, (a, w) in enumerate(zip(reg.alive(), gs.widths, strict=True)) if a < w]
    assert all(costs[i] == max(costs) for i in first_dead)


def test_controller_stops_at_the_target_and_the_search_gives_back_the_overshoot() -> None:
    model = tiny()
    gs = groups_of(model)
    target = 0.6 * gs.flops()
    reg = FlopRegularizer(gs, target_flops=target, horizon=50)
    reached = None
    for _ in range(200):
        reg.step(0.01)
        if reached is None and reg.alive_flops() <= target:
            reached = [g.norms().clone() for g in gs.groups]
    assert reached is not None
    # once there it pauses: nothing moves any more (no task gradient here to revive a channel)
    for before, g in zip(reached, gs.groups, strict=True):
        assert torch.equal(before, g.norms())
    # the last step may kill more than needed: the channels that died last come back
    keep = select_channels(gs, target, died=reg.died, round_to=None)
    kept = [int(k.sum()) for k in keep]
    assert target - max(gs.channel_costs()) < gs.flops(kept) <= target
    last_to_die = max(
        float(d[~k].max()) if (~k).any() else -1.0 for d, k in zip(reg.died, keep, strict=True)
    )
    revived = [d[k & torch.isfinite(d)] for d, k in zip(reg.died, keep, strict=True)]
    assert all(bool((r >= last_to_die).all()) for r in revived)


# ---------------------------------------------------------------------------- removal
@pytest.mark.parametrize("arch", ["tiny", "tutorial_cnn"])
def test_removal_computes_what_the_masked_model_computes(arch: str) -> None:
    from vitrina.models import create

    model = tiny() if arch == "tiny" else create("tutorial_cnn", weights=None, num_classes=3).eval()
    x = torch.randn(5, 3, *model.preprocess.input_size)
    gs = groups_of(model)
    keep = random_keep(gs, seed=1)
    gs.mask(keep)
    with torch.no_grad():
        masked = model.classify(x)
    params = sum(p.numel() for p in model.parameters())
    gs.remove(keep)
    with torch.no_grad():
        removed = model.classify(x)
    assert sum(p.numel() for p in model.parameters()) < params
    torch.testing.assert_close(removed, masked, atol=1e-5, rtol=1e-5)


def test_a_copy_of_the_groups_removes_channels_without_touching_the_original() -> None:
    """What --prune-latency times: a copy (torch-pruning's graph included: a plain deepcopy
    failed on it) that computes what the original masked the same way computes."""
    model = tiny()
    x = torch.randn(4, 3, *model.preprocess.input_size)
    gs = groups_of(model)
    keep = random_keep(gs, seed=2)
    with torch.no_grad():
        before = model.classify(x)
    params = sum(p.numel() for p in model.parameters())
    trial = gs.copy()
    assert trial.model is not model
    trial.remove(keep)
    assert sum(p.numel() for p in trial.model.parameters()) < params
    assert sum(p.numel() for p in model.parameters()) == params  # the original is whole
    with torch.no_grad():
        torch.testing.assert_close(model.classify(x), before)
    gs.mask(keep)
    with torch.no_grad():
        torch.testing.assert_close(trial.model.classify(x), model.classify(x), atol=1e-5, rtol=1e-5)


def test_a_latency_target_takes_the_fewest_channels_whose_time_meets_it(tmp_path: Path) -> None:
    """The latency path end to end with a deterministic clock (a model's "time" is its
    parameter count: no timing in tests)."""
    from vitrina.optimize.pruning import prune_model

    model = tiny()
    data = make_dataset(tmp_path / "photos", per_class=3)

    def params(m: nn.Module) -> float:
        return float(sum(p.numel() for p in m.parameters()))

    full = params(model)
    result = prune_model(
        model, sorted(data.rglob("*.png")), latency=0.3, measure=params,
        sparsify_epochs=0, finetune_epochs=0, batch_size=4, num_workers=0, round_to=None,
    )  # fmt: skip
    assert params(result.model) <= 0.7 * full
    assert params(model) == full  # the full model is the teacher: untouched
    probes = result.notes()["latency_probes"]
    # each candidate is timed beside the full model, timed again each time
    assert probes and all(p["full_seconds"] == full for p in probes)
    assert all(p["ratio"] == pytest.approx(p["seconds"] / p["full_seconds"]) for p in probes)
    assert any(p["ratio"] <= 0.7 for p in probes)


def test_channels_driven_to_zero_are_the_ones_removed() -> None:
    model = tiny()
    gs = groups_of(model)
    reg = FlopRegularizer(gs, target_flops=0.5 * gs.flops(), horizon=20)
    for _ in range(40):
        reg.step(0.02)
    alive = [g.norms() > 0 for g in gs.groups]
    assert any(not bool(a.all()) for a in alive)
    keep = select_channels(
        gs, gs.flops([int(a.sum()) for a in alive]), died=reg.died, round_to=None
    )
    for a, k in zip(alive, keep, strict=True):
        assert torch.equal(a, k)


def test_target_search_takes_the_fewest_channels_that_meet_it() -> None:
    model = tiny()
    gs = groups_of(model)
    with torch.no_grad():  # distinct scales: a strict order
        for g in gs.groups:
            for s in g.scales:
                s.param.copy_(torch.linspace(0.1, 1.0, g.width)[torch.randperm(g.width)])
    full = gs.flops()
    for fraction in (0.2, 0.5, 0.7):
        keep = select_channels(gs, (1 - fraction) * full, round_to=None)
        kept = [int(k.sum()) for k in keep]
        assert gs.flops(kept) <= (1 - fraction) * full
        # one removal fewer would miss the target: no channel's worth of FLOPs to spare
        assert gs.flops(kept) > (1 - fraction) * full - max(gs.channel_costs())
    with pytest.raises(VitrinaError, match="cannot be met"):
        select_channels(gs, 0.001 * full, round_to=None)


def test_widths_are_rounded_to_multiples_of_8() -> None:
    model = tiny()
    gs = groups_of(model)
    keep = select_channels(gs, 0.5 * gs.flops(), round_to=8)
    for g, k in zip(gs.groups, keep, strict=True):
        if g.width >= 16:
            assert int(k.sum()) % 8 == 0, g.name


def test_a_network_with_nothing_to_remove_is_refused() -> None:
    net = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 24 * 24, 3))
    model = VitrinaModel.wrap(net, arch="flat", preprocess=PRE)
    with pytest.raises(NotPrunableError, match="no channel can be removed"):
        groups_of(model)


# ---------------------------------------------------------------------------- recovery
def test_distillation_loss_is_zero_for_the_teacher_and_temperature_scaled() -> None:
    logits = torch.randn(4, 3)
    emb = torch.randn(4, 8)
    loss, parts = distillation_loss(logits, logits, emb, emb)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # KL at temperature T equals the plain formula x T^2
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    _, parts = distillation_loss(s, t, emb, emb, temperature=2.0)
    pt, ps = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)
    plain = float((pt * (pt.log() - ps.log())).sum(1).mean()) * 4
    assert parts["kl"] == pytest.approx(plain, rel=1e-4)
    # embeddings: 2 - 2 cos
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    _, parts = distillation_loss(None, None, a, b)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert parts["embedding"] == pytest.approx(float((2 - 2 * cos).mean()), rel=1e-4)


def _images(root: Path, n: int = 10) -> list[Path]:
    make_dataset(root, per_class=n)
    return sorted(root.rglob("*.*"))


def test_distillation_recovers_a_pruned_toy_model(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from vitrina.data import ImageFiles, collate_skip_bad, eval_transform
    from vitrina.training.loop import fit

    teacher = tiny(seed=3)
    with torch.no_grad():  # a teacher with opinions: logits far apart
        teacher.head_module().weight.mul_(20)
    images = _images(tmp_path / "photos")
    ds = ImageFiles(images, None, eval_transform(PRE))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    student = copy.deepcopy(teacher)
    gs = groups_of(student)
    gs.remove(random_keep(gs, seed=4, p=0.6))

    def agreement_and_gap() -> tuple[float, float]:
        student.eval()
        with torch.no_grad():
            s, t = student.classify(x), teacher.classify(x)
        return float((s.argmax(1) == t.argmax(1)).float().mean()), float((s - t).abs().mean())

    agree0, gap0 = agreement_and_gap()
    loader = DataLoader(ds, batch_size=10, shuffle=True, collate_fn=collate_skip_bad)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    task = DistillTask(teacher, logits=True)
    fit(student, task, loader, None, opt, None, epochs=40, device=torch.device("cpu"))
    reestimate_batchnorm(student, [x], forward=lambda m, t: m.classify(t))
    agree, gap = agreement_and_gap()
    assert agree0 < 0.8 and agree >= 0.95, (agree0, agree)
    assert gap < 0.7 * gap0, (gap0, gap)


def test_feature_loss_is_relative_and_zero_for_the_teacher() -> None:
    from vitrina.optimize.distill import feature_loss

    t, s = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    assert float(feature_loss([t], [t])) == 0.0
    assert float(feature_loss([2 * t], [t])) == pytest.approx(1.0)
    # every layer counts the same whatever its scale
    assert float(feature_loss([100 * s], [100 * t])) == pytest.approx(float(feature_loss([s], [t])))
    both = feature_loss([s, 2 * t], [t, t])
    assert float(both) == pytest.approx((float(feature_loss([s], [t])) + 1.0) / 2)


def _pruned_pair(seed: int = 3) -> tuple[VitrinaModel, VitrinaModel]:
    teacher = tiny(seed=seed)
    student = copy.deepcopy(teacher)
    gs = groups_of(student, residual=False)
    gs.remove(random_keep(gs, seed=4, p=0.6))
    return teacher, student


def test_matching_features_are_the_blocks_that_keep_their_shape() -> None:
    from vitrina.optimize.distill import matching_features

    teacher, student = _pruned_pair()
    x = torch.zeros(1, 3, 24, 24)
    names = matching_features(student, teacher, x, lambda m, t: m.classify(t))
    assert names and not any(".expand." in n or ".dw." in n for n in names)  # narrowed
    assert any(".project." in n for n in names)  # the residual stream keeps its width
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for model in (student, teacher):
        mods = dict(model.named_modules())
        hooks = [
            mods[n].register_forward_hook(
                lambda m, i, o, n=n: shapes.setdefault(n, []).append(tuple(o.shape))
            )
            for n in names
        ]
        model.classify(x)
        for h in hooks:
            h.remove()
    assert all(a == b for a, b in shapes.values())


def test_feature_distillation_brings_the_features_closer(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from vitrina.data import ImageFiles, collate_skip_bad, eval_transform
    from vitrina.optimize.distill import _capture, feature_loss, matching_features
    from vitrina.training.loop import fit

    teacher, pruned = _pruned_pair()
    images = _images(tmp_path / "photos")
    ds = ImageFiles(images, None, eval_transform(PRE))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    fwd = lambda m, t: m.classify(t)  # noqa: E731
    names = matching_features(pruned, teacher, x[:1], fwd)

    def feature_error(student: VitrinaModel) -> float:
        s, t = {}, {}
        hooks = [*_capture(student, names, s), *_capture(teacher, names, t)]
        student.eval()
        with torch.no_grad():
            fwd(student, x), fwd(teacher, x)
        for h in hooks:
            h.remove()
        return float(feature_loss([s[n] for n in names], [t[n] for n in names]))

    errors = {}
    for weight in (0.0, 1.0):
        student = copy.deepcopy(pruned)
        torch.manual_seed(0)
        loader = DataLoader(
            ds, batch_size=10, shuffle=True, collate_fn=collate_skip_bad,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        task = DistillTask(
            teacher, logits=True, features=names if weight else (), feature_weight=weight
        )
        opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
        fit(student, task, loader, None, opt, None, epochs=15, device=torch.device("cpu"))
        if weight:
            assert task.last_parts["features"] > 0
        errors[weight] = feature_error(student)
    assert errors[1.0] < 0.8 * errors[0.0], errors


def test_batchnorm_reestimation_gives_the_exact_statistics() -> None:
    model = tiny()
    x = torch.randn(12, 3, 24, 24)
    reestimate_batchnorm(model, [x[:6], x[6:]], forward=lambda m, t: m.classify(t))
    bn = model.net.stem[1]
    with torch.no_grad():
        pre = model.net.stem[0](x)
    halves = [pre[:6], pre[6:]]
    mean = torch.stack([h.mean((0, 2, 3)) for h in halves]).mean(0)
    var = torch.stack([h.var((0, 2, 3), unbiased=True) for h in halves]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-4)
    assert not model.training


# ---------------------------------------------------------------------------- vitrina optimize
@pytest.fixture
def own_run(toy_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(toy_run, tmp_path / "run"))


def test_optimize_prunes_to_the_flop_target_and_reports_it(own_run: Path, tmp_path: Path) -> None:
    from vitrina.classify.classifier import load
    from vitrina.optimize import optimize_run

    data = make_dataset(tmp_path / "check", per_class=4)
    report = optimize_run(
        own_run,
        calib=data,
        eval_dir=data,
        variants="pruned",
        prune_flops=0.4,
        sparsify_epochs=2,
        finetune_epochs=2,
        batch_size=8,
        num_workers=0,
    )
    fp32, pruned = report["variants"]["fp32"], report["variants"]["pruned"]
    notes = pruned["notes"]
    assert pruned["gflops"] <= 0.6 * fp32["gflops"] + 1e-12
    assert notes["flops_ratio"] == pytest.approx(pruned["gflops"] / fp32["gflops"])
    assert pruned["params"] < fp32["params"] and pruned["size_bytes"] > 0
    assert pruned["images_per_s"] > 0 and notes["fp32_onnx_images_per_s"] > 0
    assert {"accuracy", "top1_agreement", "speedup"} <= set(pruned)
    assert notes["budget"]["sparsify_epochs"] == 2 and len(notes["sparsify"]) == 2
    from vitrina.optimize import DISTILL_FEATURES

    assert notes["budget"]["feature_weight"] == DISTILL_FEATURES > 0
    assert len(notes["recover"]) == 2
    # the widths plot: a real PNG, and the widths it shows
    plot = own_run / "variants" / "pruned-widths.png"
    assert Image.open(plot).format == "PNG"
    widths = notes["widths"]
    assert any(w["after"] < w["before"] for w in widths)
    assert all(w["after"] <= w["before"] for w in widths)
    saved = json.loads((own_run / "variants" / "report.json").read_text())
    assert saved["variants"]["pruned"]["gflops"] == pruned["gflops"]
    # the pruned backend answers from the variant, logits and embeddings
    clf = load(own_run)
    paths = sorted(data.rglob("*.png"))
    got = clf.predict(paths, backend="pruned", num_workers=0)
    assert all(p.label in clf.classes for p in got)
    from vitrina.engine import Embedding, Engine

    eng = Engine(clf.model, backend="pruned", device="cpu", num_workers=0)
    vectors = [r.value for r in eng.run(Embedding(), paths)]
    assert len(vectors[0]) == clf.model.num_features


def test_optimize_cli_prints_flops_and_the_plot(capsys, own_run: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "check", per_class=3)
    code, out, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "pruned", "--prune-flops", "0.3", "--sparsify-epochs", "1",
        "--finetune-epochs", "1", "--batch-size", "8", "--distill-features", "2",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((own_run / "variants" / "report.json").read_text())
    assert report["variants"]["pruned"]["notes"]["budget"]["feature_weight"] == 2.0
    assert "GFLOPs" in out and "pruned-widths.png" in out and "of the FLOPs" in out


def test_optimize_with_a_budget_judges_the_photos_and_their_shifts(
    capsys, own_run: Path, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "check", per_class=4)
    first_class = sorted(d for d in data.iterdir() if d.is_dir())[0]
    (first_class / "broken.png").write_bytes(b"not a png")  # skipped by both judgements
    code, out, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "pruned", "--prune-flops", "0.3", "--prune-max-drop", "100",
        "--finetune-epochs", "1", "--batch-size", "8",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((own_run / "variants" / "report.json").read_text())
    fp32, pruned = report["variants"]["fp32"], report["variants"]["pruned"]
    search = pruned["notes"]["budget_search"]
    assert search["max_drop"] == 100 and search["held"] and search["removed"] == 0.3
    (tried,) = search["tried"]  # a budget of 100 points holds at once: one build
    assert set(tried["drops"]) == {"clean", "relit", "shifted", "rescaled"}
    # the judgement's clean photos are the ones the report measures: the same drop
    measured = 100 * (fp32["accuracy"] - pruned["accuracy"])
    assert tried["drops"]["clean"] == pytest.approx(measured, abs=1e-6)
    assert pruned["status"] == "ok"
    assert "removing 30%" in out and "within the budget of 100" in out
    assert "rescaled" in err  # the stage lines on stderr say what was judged


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prune-max-drop", "0"], "--prune-max-drop is the accuracy"),
        (["--prune-max-drop", "nan"], "--prune-max-drop is the accuracy"),
        (["--prune-flops", "1.5"], "--prune-flops is the fraction to remove"),
        (["--prune-flops", "0"], "--prune-flops is the fraction to remove"),
        (["--prune-latency", "-0.2"], "--prune-latency is the fraction to remove"),
        (["--prune-flops", "0.5", "--prune-latency", "0.5"], "not both"),
        (["--prune-flops", "0.99"], "cannot remove 99% of the FLOPs"),
        (["--distill-features", "-1"], "--distill-features is a weight"),
    ],
)
def test_optimize_refuses_a_bad_target_in_one_line(
    capsys, own_run: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    data = make_dataset(tmp_path / "check", per_class=2)
    code, _, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "pruned", "--sparsify-epochs", "0", "--finetune-epochs", "0", *args,
    )  # fmt: skip
    assert code == 1
    one_line_error(err, needle)


def test_optimize_refuses_a_budget_without_the_pruned_variant(
    capsys, own_run: Path, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "check", per_class=2)
    code, _, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "int8", "--prune-max-drop", "1",
    )  # fmt: skip
    assert code == 1
    one_line_error(err, "add pruned to --variants")
    assert not (own_run / "variants" / "int8.onnx").exists()  # refused before any work


def test_optimize_refuses_missing_training_photos(capsys, own_run: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "check", per_class=2)
    meta = json.loads((own_run / "vitrina.json").read_text())
    meta["data"]["root"] = str(tmp_path / "gone")
    (own_run / "vitrina.json").write_text(json.dumps(meta))
    code, _, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "pruned",
    )  # fmt: skip
    assert code == 1
    one_line_error(err, "gone", "--train DIR")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "pruned", "--train", str(empty),
    )  # fmt: skip
    assert code == 1
    one_line_error(err, "no photos to fine-tune")


def test_optimize_refuses_a_model_it_cannot_prune(
    capsys, own_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vitrina.runs

    data = make_dataset(tmp_path / "check", per_class=2)
    flat = VitrinaModel.wrap(
        nn.Sequential(nn.Flatten(1), nn.Linear(3 * 32 * 32, 3)),
        arch="flat",
        preprocess=Preprocess(input_size=(32, 32), channels=3, crop_pct=1.0),
    )
    monkeypatch.setattr(vitrina.runs, "load_model", lambda *a, **k: flat)
    code, _, err = run_cli(
        capsys, "optimize", str(own_run), "--calib", str(data), "--eval", str(data),
        "--variants", "pruned",
    )  # fmt: skip
    assert code == 1
    one_line_error(err, "cannot prune 'flat'", "no channel can be removed")


@pytest.mark.slow
def test_optimize_an_embedding_run_is_judged_by_map(tmp_path: Path) -> None:
    from test_train_embedding import cfg, make_identities
    from vitrina.engine import Embedding, Engine
    from vitrina.optimize import optimize_run
    from vitrina.runs import load_model
    from vitrina.training.embedding import train_embedding

    people = make_identities(tmp_path / "people", n_ids=6, per_id=5)
    run = train_embedding(cfg(people, tmp_path / "run", epochs=2), progress=False).run_dir
    report = optimize_run(
        run,
        calib=people,
        variants="pruned",
        prune_flops=0.3,
        prune_max_drop=100.0,  # holds at once: one build, judged by mAP on four sets
        sparsify_epochs=1,
        finetune_epochs=1,
        batch_size=8,
        num_workers=0,
    )
    assert report["task"] == "embedding" and "held out" in report["eval"]
    fp32, pruned = report["variants"]["fp32"], report["variants"]["pruned"]
    (tried,) = pruned["notes"]["budget_search"]["tried"]
    assert set(tried["drops"]) == {"clean", "relit", "shifted", "rescaled"}
    assert tried["drops"]["clean"] == pytest.approx(100 * (fp32["mAP"] - pruned["mAP"]), abs=1e-6)
    for v in (fp32, pruned):
        assert 0.0 < v["mAP"] <= 1.0 and 0.0 <= v["rank1"] <= 1.0
    assert fp32["top1_agreement"] == 1.0
    assert pruned["gflops"] <= 0.7 * fp32["gflops"] + 1e-12
    assert (run / "variants" / "pruned-embed.onnx").is_file()
    model = load_model(run)
    photos = sorted(people.rglob("*.png"))[:4]
    vec = [r.value for r in Engine(model, backend="pruned", device="cpu").run(Embedding(), photos)]
    assert len(vec[0]) == model.num_features


@pytest.mark.parametrize("n", [len(COLORS)])
def test_round_to_keeps_tiny_layers_whole(n: int) -> None:
    """A layer narrower than 16 channels is not rounded (it may keep any number >= 1)."""
    from vitrina.models import create

    model = create("tutorial_cnn", weights=None, num_classes=n)
    gs = groups_of(model)
    keep = select_channels(gs, 0.5 * gs.flops())
    six = [k for g, k in zip(gs.groups, keep, strict=True) if g.width == 6]
    assert six and 1 <= int(six[0].sum()) <= 6


# ---------------------------------------------------------------------------- re-fitting
def test_reconstruction_is_the_least_squares_fit_and_brings_the_outputs_back() -> None:
    from vitrina.optimize.reconstruct import reconstruct_pointwise

    teacher = tiny(seed=5)
    student = copy.deepcopy(teacher)
    gs = groups_of(student, residual=False)
    keep = [torch.arange(g.width) % 3 != 0 for g in gs.groups]  # a third of the hidden channels
    gs.mask(keep)
    x = torch.randn(16, 3, 24, 24)
    fwd = lambda m, t: m.classify(t)  # noqa: E731
    with torch.no_grad():
        masked_gap = float((student.classify(x) - teacher.classify(x)).pow(2).mean())
        hidden = student.net.dw(student.net.expand(student.net.stem(x)))  # project's inputs
        target = teacher.net.project[0](teacher.net.dw(teacher.net.expand(teacher.net.stem(x))))
    expand_before = student.net.expand[0].weight.clone()
    report = reconstruct_pointwise(student, teacher, x, forward=fwd, ridge=0.0)
    # re-fitted: the layer that reads removed channels, and the one after the residual sum
    # (its inputs moved by what the first fit left); the expansion reads what it always read
    assert [r["layer"] for r in report] == ["net.project.0", "net.last.0"]
    assert torch.equal(student.net.expand[0].weight, expand_before)
    # ... to the plain least-squares solution over every position of every image
    a = hidden.permute(0, 2, 3, 1).reshape(-1, 32)[:, keep[0]].double()
    y = target.permute(0, 2, 3, 1).reshape(-1, 16).double()
    plain = torch.linalg.lstsq(a, y).solution.T
    got = student.net.project[0].weight.detach()[:, :, 0, 0]
    torch.testing.assert_close(got[:, keep[0]].double(), plain, atol=1e-4, rtol=1e-4)
    assert float(got[:, ~keep[0]].abs().max()) == 0.0
    assert report[0]["error_after"] < report[0]["error_before"]
    with torch.no_grad():
        refit_gap = float((student.classify(x) - teacher.classify(x)).pow(2).mean())
    assert refit_gap < 0.5 * masked_gap, (masked_gap, refit_gap)
    # the removed network computes what the re-fitted masked one computes
    with torch.no_grad():
        before = student.classify(x)
    gs.remove(keep)
    with torch.no_grad():
        torch.testing.assert_close(student.classify(x), before, atol=1e-5, rtol=1e-5)


def test_channel_fisher_is_the_squared_gradient_of_a_mask_on_the_channel() -> None:
    """The Fisher of each channel's removal, against the exact Gauss-Newton value of a mask
    multiplying the channel's batch-norm outputs, written out with per-image Jacobians."""
    from torch.func import jacrev

    from vitrina.optimize.sparsity import channel_fisher

    model = tiny(seed=6)
    with torch.no_grad():
        model.head_module().weight.mul_(5)
    gs = groups_of(model)
    x = torch.randn(3, 3, 24, 24)
    T = 2.0
    # Each channel's mask: one value per group channel, applied after every batch norm of the
    # group (a channel tied by a sum is masked in each of its batch norms).
    masks: dict[str, torch.Tensor] = {}

    def hook_for(gi: int, s) -> object:
        def hook(module, inputs, output):
            m = masks["m"][gi]
            per = torch.ones(output.shape[1], dtype=output.dtype)
            per = per.index_put((s.idx,), m[s.root])
            return output * per[None, :, None, None]

        return hook

    bn_of = {id(m.weight): m for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    hooks = [
        bn_of[id(s.param)].register_forward_hook(hook_for(gi, s))
        for gi, g in enumerate(gs.groups)
        for s in g.scales
    ]
    model.eval()

    def outputs(ms: list[torch.Tensor], xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks["m"] = ms
        emb = model.embed(xi[None])
        return model.head(emb)[0] / T, torch.nn.functional.normalize(emb, dim=1)[0]

    ones = [torch.ones(g.width) for g in gs.groups]
    exact = [torch.zeros(g.width) for g in gs.groups]
    for xi in x:
        jz, je = jacrev(outputs)(ones, xi)
        with torch.no_grad():
            z, _ = outputs(ones, xi)
        q = torch.softmax(z, 0)
        hz = (torch.diag(q) - q[:, None] * q[None, :]) * T * T
        for gi in range(len(gs.groups)):
            a, b = jz[gi], je[gi]
            exact[gi] += torch.einsum("cp,cd,dp->p", a, hz, a) + 2 * (b * b).sum(0)
    masks["m"] = ones
    for h in hooks:
        h.remove()
    exact = [e / len(x) for e in exact]
    runs = [channel_fisher(model, gs, [x], logits=True, temperature=T, seed=i) for i in range(300)]
    got = [torch.stack([r[gi] for r in runs]).mean(0) for gi in range(len(gs.groups))]
    for w, g in zip(exact, got, strict=True):
        torch.testing.assert_close(g, w.detach(), rtol=0.25, atol=0.02 * float(w.detach().max()))


@pytest.mark.parametrize("freeze", [True, False])
def test_distillation_keeps_the_batchnorm_statistics_when_asked(freeze: bool) -> None:
    from vitrina.data.dataset import Batch

    teacher = tiny(seed=7)
    student = copy.deepcopy(teacher)
    task = DistillTask(teacher, logits=True, freeze_batchnorm=freeze)
    before = student.net.stem[1].running_mean.clone()
    task.set_train_mode(student)
    x = torch.randn(6, 3, 24, 24) * 3 + 1  # photos unlike the statistics
    batch = Batch(x, torch.full((6,), -1), torch.arange(6), [])
    out = task.step(student, batch)
    out.loss.backward()
    assert student.training and student.net.stem[0].weight.grad is not None  # layers train
    assert torch.equal(student.net.stem[1].running_mean, before) == freeze


def test_mixup_distils_teacher_and_student_on_the_same_seeded_blends() -> None:
    """Function matching: both networks see the same blend of two photos of the batch, a
    new blend each step, the same blends for the same seed."""
    from vitrina.data.dataset import Batch

    x = torch.rand(6, 3, 24, 24)
    batch = Batch(x, torch.full((6,), -1), torch.arange(6), [])
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    def spy(name: str, net: torch.nn.Module) -> None:
        net.register_forward_pre_hook(lambda m, a: seen[name].append(a[0].detach().clone()))

    teacher, student = tiny(seed=7), tiny(seed=8)
    spy("teacher", teacher.net)
    spy("student", student.net)
    task = DistillTask(teacher, logits=True, mixup=True, generator=torch.Generator().manual_seed(1))
    task.step(student, batch)
    task.step(student, batch)
    t, s = seen["teacher"], seen["student"]
    assert torch.equal(t[0], s[0]) and torch.equal(t[1], s[1])
    assert not torch.allclose(t[0], x) and not torch.allclose(t[0], t[1])
    # every blend lies between two photos of the batch, pixel by pixel
    assert float(t[0].min()) >= float(x.min()) and float(t[0].max()) <= float(x.max())
    again = DistillTask(
        teacher, logits=True, mixup=True, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(again.mix(x), t[0].contiguous())
    plain = DistillTask(teacher, logits=True)
    seen["teacher"].clear()
    plain.step(student, batch)
    assert torch.equal(seen["teacher"][0], x)


def test_the_onnx_timer_exports_the_first_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """--prune-latency times the full model beside every candidate: its export is kept."""
    import vitrina.engine.onnx
    from vitrina.optimize import _onnx_timer

    exported: list[int] = []
    real = vitrina.engine.onnx.export_onnx

    def counting(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        exported.append(id(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(vitrina.engine.onnx, "export_onnx", counting)
    full, other = tiny(), tiny(seed=1)
    measure = _onnx_timer("logits", torch.randn(2, 3, *full.preprocess.input_size))
    for _ in range(3):
        assert measure(full) > 0 and measure(other) > 0
    assert exported.count(id(full)) == 1 and exported.count(id(other)) == 3
