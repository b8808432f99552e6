"""Faster R-CNN training steps with vitrina's RoIAlign (separable matrix products) against
torchvision's operator, in one run, on this machine.

The detector is ``detect train``'s: EfficientNet-Lite0 (ImageNet) + FPN, the stem frozen,
channels-last, AdamW; each step takes ``--batch`` photos at ``--input-size`` with 1-4 boxes
each (generated: the step's cost does not depend on what the photos show). The two
contenders are the same network with only the box head's pool swapped, timed in
interleaved rounds (``--rounds``, medians reported) after warm-up steps; the pooled features
and their gradients are compared on one batch first (they must agree to float rounding).

    python benchmarks/roi_align.py [--rounds 5] [--steps 5] [--input-size 224] [--batch 8]

Prints: seconds per step and photos/s of each, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from _common import cpu_flags, machine
from torchvision.ops import MultiScaleRoIAlign

from vitrina.models.detection import DetectorSpec, create_detector
from vitrina.models.roi_align import SeparableRoIAlign


def build(size: int, pool: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    spec = DetectorSpec(head="fasterrcnn", num_classes=25, input_size=(size, size))
    model = create_detector(spec, pretrained_backbone=True)
    old = model.net.roi_heads.box_roi_pool
    if pool == "torchvision":
        model.net.roi_heads.box_roi_pool = MultiScaleRoIAlign(
            old.featmap_names, old.output_size, old.sampling_ratio
        )
    assert isinstance(model.net.roi_heads.box_roi_pool, SeparableRoIAlign) == (pool == "vitrina")
    for p in model.stem_parameters():
        p.requires_grad_(False)
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def batch(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    x = torch.rand(n, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    targets = []
    for _ in range(n):
        k = int(torch.randint(1, 5, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * size * 0.65
        wh = size * (0.1 + torch.rand(k, 2, generator=g) * 0.3)
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(0, 25, (k,), generator=g),
            }
        )
    return x, targets


def step(model, opt, x, targets) -> None:
    loss = sum(model.losses(x, targets).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def same_numbers(size: int) -> float:
    """The largest difference between the two pools' outputs and gradients on real maps."""
    model, _ = build(size, "vitrina")
    model.eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = model.net.backbone(x)
    boxes = [batch(1, size, torch.Generator().manual_seed(i))[1][0]["boxes"] for i in (2, 3)]
    shapes = [(size, size)] * 2
    pools = (model.net.roi_heads.box_roi_pool, MultiScaleRoIAlign(["0", "1", "2"], 7, 2))
    outs, grads = [], []
    for pool in pools:
        m = {k: v.clone().requires_grad_(True) for k, v in maps.items()}
        y = pool(m, boxes, shapes)
        y.backward(torch.ones_like(y))
        outs.append(y.detach())
        # a level no box maps to: torchvision's gradient is zeros, vitrina's None
        grads.append(torch.cat([(m[k].grad if m[k].grad is not None else torch.zeros_like(m[k]))
                                .flatten() for k in ("0", "1", "2")]))  # fmt: skip
    return max(float((outs[0] - outs[1]).abs().max()), float((grads[0] - grads[1]).abs().max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="timed steps a round")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    print(
        f"machine: {machine()}; CPU flags: {cpu_flags()}; torch threads {torch.get_num_threads()}"
    )
    print(
        f"largest difference, pooled features and their gradients: {same_numbers(args.input_size):.2e}"
    )
    contenders = {name: build(args.input_size, name) for name in ("torchvision", "vitrina")}
    g = torch.Generator().manual_seed(0)
    batches = [batch(args.batch, args.input_size, g) for _ in range(args.steps)]
    for model, opt in contenders.values():  # warm-up
        for x, t in batches[:2]:
            step(model, opt, x, t)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, (model, opt) in contenders.items():
            t0 = time.perf_counter()
            for x, t in batches:
                step(model, opt, x, t)
            times[name].append((time.perf_counter() - t0) / args.steps)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.3f} s/step" for n, v in times.items()),
              flush=True)  # fmt: skip
    med = {n: statistics.median(v) for n, v in times.items()}
    for name in contenders:
        print(f"{name:12s} {med[name]:.3f} s/step  {args.batch / med[name]:5.1f} photos/s")
    print(
        f"vitrina's RoIAlign: training steps {med['torchvision'] / med['vitrina']:.2f}x "
        f"torchvision's (medians of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
