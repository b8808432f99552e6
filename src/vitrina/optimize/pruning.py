"""Structured pruning: remove a fraction of the channels of every layer, then fine-tune.

Channel groups that must shrink together (a conv, its batch norm, the next layer's inputs,
residual additions, depthwise pairs) are found by Torch-Pruning's dependency graph; channels
are ranked by the L1 norm of their weights. The classifier keeps its outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel

__all__ = ["finetune", "prune_channels"]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_channels(model: VitrinaModel, fraction: float) -> dict[str, Any]:
    """Prune ``fraction`` of the channels of each prunable layer of ``model`` in place.

    Returns parameter counts and GFLOPs before and after. ``model.num_features`` is updated
    to the new embedding size."""
    if not 0.0 < fraction < 1.0:
        raise VitrinaError(f"prune fraction must be between 0 and 1, got {fraction}")
    try:
        import torch_pruning as tp
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise VitrinaError("pruning needs torch-pruning: pip install torch-pruning") from e
    model.eval()
    h, w = model.preprocess.input_size
    example = torch.zeros(
        1, model.preprocess.channels, h, w, device=next(model.parameters()).device
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Multiples of 8 keep SIMD kernels efficient; tiny nets have too few channels for that.
    round_to = 8 if convs and min(m.out_channels for m in convs) >= 16 else None
    head = model.head_module()
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=fraction,
            ignored_layers=[head] if head is not None else [],
            round_to=round_to,
        )
        pruner.step()
    except Exception as e:
        raise VitrinaError(
            f"cannot prune {model.arch!r} ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    macs1, params1 = tp.utils.count_ops_and_params(model, example)
    with torch.no_grad():
        model.num_features = int(model.embed(example).shape[1])
    return {
        "fraction": fraction,
        "params_before": int(params0),
        "params_after": int(params1),
        "gflops_before": 2 * float(macs0) / 1e9,
        "gflops_after": 2 * float(macs1) / 1e9,
    }


def finetune(
    model: VitrinaModel,
    data_dir: str | Path,
    classes: list[str],
    *,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """A brief fine-tune of every weight on a class-folder tree (light augmentation, AdamW).
    Returns the per-epoch history."""
    from vitrina.data import ImageFiles, collate_skip_bad, scan_folder, train_transform
    from vitrina.engine import default_workers, torch_threads
    from vitrina.training.classification import ClassificationTask
    from vitrina.training.loop import Callback, LoopState, fit

    scan = scan_folder(data_dir, classes=classes)
    if not scan.samples:
        raise VitrinaError(f"{data_dir}: no images to fine-tune on")
    device = device or next(model.parameters()).device
    ds = ImageFiles(
        [s.path for s in scan.samples],
        [s.label for s in scan.samples],
        train_transform(model.preprocess, "light"),
    )
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers if len(ds) > batch_size else 0,
        collate_fn=collate_skip_bad,
        generator=torch.Generator().manual_seed(0),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    class _Report(Callback):
        def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
            if on_epoch:
                on_epoch(state.epoch, record)

    with torch_threads(workers if len(ds) > batch_size else 0):
        state = fit(
            model,
            ClassificationTask(),
            loader,
            None,
            opt,
            None,
            epochs=epochs,
            callbacks=[_Report()],
            device=device,
        )
    model.eval()
    return state.history
