"""Layer-wise least-squares reconstruction: the layers that read removed channels re-fitted so
that they answer what the full model's layers answer.

After channels are masked (or removed), every pointwise (1x1) convolution that reads them
sees fewer inputs. Its weights are solved again, in closed form, so that on the user's photos
it produces what the same layer of the full model produces (He et al., "Channel Pruning for
Accelerating Very Deep Neural Networks", 2017; Luo et al., "ThiNet", 2017)::

    W = argmin ||X_student W^T - Y_teacher||^2 + ridge x mean(diag(X^T X)) x ||W||^2

with ``X_student`` the layer's inputs in the pruned network (at sampled positions of every
photo) and ``Y_teacher`` the full layer's outputs at the same positions. Layers are solved in
forward order within one pass (a pre-forward hook solves a layer before it runs), so each
layer corrects for the errors left by the ones before it. Depthwise convolutions read only
their own channel and need nothing; the batch norms after a re-fitted layer keep the full
model's statistics (the outputs they see are fitted to the full model's).

It needs forward passes only — seconds, where the distillation that follows needs epochs —
and leaves that distillation much less to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["reconstruct_pointwise"]

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _pointwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C): one row per position."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


@torch.no_grad()
def reconstruct_pointwise(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    forward: Forward,
    max_positions: int = 16384,
    ridge: float = 1e-3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Re-fit, in forward order, every pointwise convolution of ``student`` whose output on
    ``images`` differs from the same-named layer of ``teacher`` (same architecture, fewer
    channels or masked ones). ``images``: one batch (B, C, H, W) of the user's photos.

    Modifies ``student`` in place (both models are left in eval mode). Returns, per re-fitted
    layer, its name, the inputs it reads, and its relative squared error before and after.
    """
    t_modules = dict(teacher.named_modules())
    names = [
        n
        for n, m in student.named_modules()
        if _pointwise(m) and n in t_modules and _pointwise(t_modules[n])
    ]
    gen = torch.Generator().manual_seed(seed)
    positions: dict[str, torch.Tensor] = {}
    targets: dict[str, torch.Tensor] = {}
    student.eval()
    teacher.eval()

    def keep_target(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            rows = _rows(output)
            idx = torch.randperm(len(rows), generator=gen)[:max_positions].to(rows.device)
            positions[name] = idx
            targets[name] = rows[idx].double()

        return hook

    hooks = [t_modules[n].register_forward_hook(keep_target(n)) for n in names]
    try:
        forward(teacher, images)
    finally:
        for h in hooks:
            h.remove()

    report: list[dict[str, Any]] = []

    def solve(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            if name not in targets:
                return
            x = _rows(inputs[0])[positions[name]].double()
            y = targets[name]
            w = module.weight[:, :, 0, 0].double()  # type: ignore[index]
            if y.shape[1] != w.shape[0]:  # the layer's outputs were removed: nothing to match
                return
            bias = module.bias  # type: ignore[union-attr]
            if bias is not None:  # the bias stays; the weights fit the rest
                y = y - bias.double()
            scale = float(y.pow(2).mean()) or 1.0
            before = float((x @ w.T - y).pow(2).mean()) / scale
            if before < 1e-8:  # reads what it always read
                return
            live = x.abs().sum(0) > 0  # masked channels read as exact zeros
            xl = x[:, live]
            gram = xl.T @ xl
            reg = ridge * float(gram.diagonal().mean()) + 1e-12
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            solved = torch.linalg.solve(gram + reg * eye, xl.T @ y)
            new = torch.zeros_like(w)
            new[:, live] = solved.T
            fitted = x @ new.T
            after = float((fitted - y).pow(2).mean()) / scale
            if after < before:
                module.weight[:, :, 0, 0] = new.to(module.weight.dtype)  # type: ignore[index]
            report.append(
                {
                    "layer": name,
                    "inputs": int(live.sum()),
                    "of": int(x.shape[1]),
                    "error_before": before,
                    "error_after": min(after, before),
                }
            )

        return hook

    hooks = [dict(student.named_modules())[n].register_forward_pre_hook(solve(n)) for n in names]
    try:
        forward(student, images)
    finally:
        for h in hooks:
            h.remove()
    return report
